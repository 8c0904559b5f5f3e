//! Cooperative matrices: which of the adapter's configurations Fado's cooperative-matrix
//! prefill matmul (`ops::matmul::coop`, `shaders/matmul_coop.wgsl`) can use.

#![warn(missing_docs)]

/// A cooperative-matrix configuration: `size`×`size`×`size` f16 × f16 → f32 products at
/// subgroup scope, on subgroups of exactly `subgroup` invocations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoopMat {
    /// Side of the A, B and C tiles: 8 or 16 (the sizes WGSL's `coop_mat8x8` /
    /// `coop_mat16x16` name).
    pub size: u32,
    /// The adapter's (fixed) subgroup size: the kernel places its subgroups by it.
    pub subgroup: u32,
}

/// The configuration Fado's cooperative-matrix matmul can use on `adapter`, if any: square
/// f16 × f16 → f32 tiles of side 16 (preferred: NVIDIA, AMD) or 8 (Mesa 26's lavapipe), f16 in
/// shaders, and one subgroup size (the kernel's workgroup is four subgroups, placed by
/// `subgroup_id`, so a varying size would leave tiles unwritten).
pub fn coopmat_config(adapter: &wgpu::Adapter) -> Option<CoopMat> {
    let f = adapter.features();
    let needed = wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX
        | wgpu::Features::SHADER_F16
        | wgpu::Features::SUBGROUP;
    let info = adapter.get_info();
    let (lo, hi) = (info.subgroup_min_size, info.subgroup_max_size);
    if !f.contains(needed) || lo != hi || lo == 0 || !hi.is_power_of_two() || hi > 64 {
        return None;
    }
    let props = adapter.cooperative_matrix_properties();
    [16, 8].into_iter().find_map(|size| {
        props
            .iter()
            .any(|p| {
                p.m_size == size
                    && p.n_size == size
                    && p.k_size == size
                    && p.ab_type == wgpu::CooperativeScalarType::F16
                    && p.cr_type == wgpu::CooperativeScalarType::F32
            })
            .then_some(CoopMat { size, subgroup: hi })
    })
}
