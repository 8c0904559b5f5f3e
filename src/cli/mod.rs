//! Subcommand implementations (thin: the library does the work).

pub mod args;
pub mod bench;
pub mod load;
pub mod perplexity;
pub mod quantize;
pub mod run;
pub mod serve;

use fado::gpu::GpuContext;
use fado::{Error, Result};

/// `fado devices`: print each adapter with its backend, type, features and key limits.
pub fn devices() -> Result<()> {
    let adapters = GpuContext::list_adapters();
    if adapters.is_empty() {
        return Err(Error::NoAdapter(
            "wgpu found no Vulkan/Metal/DX12 adapter; on Debian/Ubuntu without a GPU, \
             `apt-get install -y mesa-vulkan-drivers libvulkan1` provides lavapipe"
                .into(),
        ));
    }
    for a in adapters {
        println!("[{}] {}", a.index, a.name);
        println!(
            "    backend: {}   type: {}   driver: {}",
            a.backend, a.device_type, a.driver
        );
        println!(
            "    features: {}",
            if a.features.is_empty() {
                "(none of the optional ones)".to_string()
            } else {
                a.features.join(", ")
            }
        );
        println!(
            "    subgroup size: {}..{}",
            a.subgroup_sizes.0, a.subgroup_sizes.1
        );
        if !a.cooperative_matrix.is_empty() {
            println!(
                "    cooperative matrices: {}",
                a.cooperative_matrix.join(", ")
            );
        }
        println!(
            "    prefill matmul: {} (FADO_KERNELS / FADO_COOPMAT choose)",
            a.prefill_matmul
        );
        for (k, v) in &a.limits {
            println!("    {k}: {v}{}", human(*v));
        }
    }
    Ok(())
}

fn human(v: u64) -> String {
    if v >= 1 << 30 {
        format!(" ({:.1} GiB)", v as f64 / (1u64 << 30) as f64)
    } else if v >= 1 << 20 {
        format!(" ({:.0} MiB)", v as f64 / (1u64 << 20) as f64)
    } else {
        String::new()
    }
}
