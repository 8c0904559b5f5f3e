//! Tensors: a dtype, a shape, and a place on the GPU (a buffer range, or a texel image).
//!
//! Shapes are row-major, outermost first. A linear layer's weight is `[out, in]` as in
//! Hugging Face checkpoints, so `y = x · Wᵀ`. 16-bit floats are stored packed two per `u32`
//! and widened inside the kernels; block-quantized types keep their blocks.

#![warn(missing_docs)]

use std::fmt;
use std::sync::Arc;

/// Element type of a tensor as stored on the GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    /// 32-bit float.
    F32,
    /// Token ids and other indices.
    U32,
    /// IEEE half precision, packed two per `u32`.
    F16,
    /// bfloat16, packed two per `u32`.
    BF16,
    /// Block-quantized formats (GGUF names). Block size in elements and bytes per block below.
    Q8_0,
    /// GGUF Q4_0: 32 4-bit values and an f16 scale.
    Q4_0,
    /// GGUF Q4_1: 32 4-bit values, an f16 scale and an f16 minimum.
    Q4_1,
    /// GGUF Q4_K: 256 4-bit values in 8 sub-blocks with 6-bit scales and minima.
    Q4K,
    /// GGUF Q5_K: like Q4_K with a fifth bit per value.
    Q5K,
    /// GGUF Q6_K: 256 6-bit values in 16 sub-blocks with 8-bit scales.
    Q6K,
}

impl DType {
    /// The block-quantized formats (GGUF's), in one list that every part of Fado uses.
    pub const BLOCK_FORMATS: [DType; 6] = [
        DType::Q8_0,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q4K,
        DType::Q5K,
        DType::Q6K,
    ];
    /// The float formats a weight can have.
    pub const FLOATS: [DType; 3] = [DType::F32, DType::F16, DType::BF16];
    /// Every format a weight can have: the floats, then the block formats.
    pub const WEIGHT_TYPES: [DType; 9] = {
        let mut all = [DType::F32; 9];
        let mut i = 0;
        while i < all.len() {
            all[i] = if i < 3 {
                Self::FLOATS[i]
            } else {
                Self::BLOCK_FORMATS[i - 3]
            };
            i += 1;
        }
        all
    };

    /// Whether this is one of [`DType::BLOCK_FORMATS`].
    pub fn is_quantized(self) -> bool {
        Self::BLOCK_FORMATS.contains(&self)
    }

    /// The weight type named `name` ([`DType::name`], any case), if there is one.
    pub fn from_name(name: &str) -> Option<DType> {
        let name = name.to_ascii_lowercase();
        Self::WEIGHT_TYPES.into_iter().find(|d| d.name() == name)
    }

    /// The names of `types`, as `a, b or c` for messages.
    pub fn list(types: &[DType]) -> String {
        let names: Vec<&str> = types.iter().map(|d| d.name()).collect();
        match names.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
            Some((last, _)) => last.to_string(),
            None => String::new(),
        }
    }

    /// Elements per block (1 for plain floats).
    pub fn block_len(self) -> usize {
        match self {
            DType::F32 | DType::U32 | DType::F16 | DType::BF16 => 1,
            DType::Q8_0 | DType::Q4_0 | DType::Q4_1 => 32,
            DType::Q4K | DType::Q5K | DType::Q6K => 256,
        }
    }

    /// Bytes per block as stored in GGUF files.
    pub fn block_bytes(self) -> usize {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::Q8_0 => 34,
            DType::Q4_0 => 18,
            DType::Q4_1 => 20,
            DType::Q4K => 144,
            DType::Q5K => 176,
            DType::Q6K => 210,
        }
    }

    /// f32, f16 or bf16.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }

    /// Bytes for `n` elements (n a multiple of the block length for quantized types).
    pub fn bytes_for(self, n: usize) -> usize {
        n.div_ceil(self.block_len()) * self.block_bytes()
    }

    /// Lower-case GGUF-style name (`f32`, `q4_k`, …).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::U32 => "u32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::Q8_0 => "q8_0",
            DType::Q4_0 => "q4_0",
            DType::Q4_1 => "q4_1",
            DType::Q4K => "q4_k",
            DType::Q5K => "q5_k",
            DType::Q6K => "q6_k",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a tensor is, without where it lives.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorDesc {
    /// Element type.
    pub dtype: DType,
    /// Shape, outermost first.
    pub shape: Vec<usize>,
}

impl TensorDesc {
    /// A description of `dtype` elements in `shape`.
    pub fn new(dtype: DType, shape: impl Into<Vec<usize>>) -> Self {
        TensorDesc {
            dtype,
            shape: shape.into(),
        }
    }
    /// An f32 description.
    pub fn f32(shape: impl Into<Vec<usize>>) -> Self {
        Self::new(DType::F32, shape)
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Bytes as stored (16-bit types padded to whole `u32`s so the buffer can be bound as `array<u32>`).
    pub fn size_bytes(&self) -> u64 {
        let b = self.dtype.bytes_for(self.numel());
        (b.div_ceil(4) * 4) as u64
    }
    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    /// Size of the last dimension.
    pub fn cols(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }
    /// Product of all dimensions but the last.
    pub fn rows(&self) -> usize {
        let r = self.shape.len();
        if r == 0 {
            1
        } else {
            self.shape[..r - 1].iter().product()
        }
    }
}

impl fmt::Display for TensorDesc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{:?}", self.dtype, self.shape)
    }
}

/// Where a tensor's bytes live on the GPU.
#[derive(Clone, Debug)]
pub enum Place {
    /// Bytes `offset ..` of a storage buffer.
    Buffer {
        /// The buffer holding the data.
        buffer: Arc<wgpu::Buffer>,
        /// Byte offset of the data in the buffer.
        offset: u64,
    },
    /// A texel image of the same bytes ([`Texels`]): weight matrices on CPU
    /// devices, where kernels fetch them as texels (the placement rule of the gpu module).
    Texels(Arc<Texels>),
}

/// A tensor resident on the GPU: a description plus where its bytes are.
#[derive(Clone, Debug)]
pub struct Tensor {
    /// Dtype and shape.
    pub desc: TensorDesc,
    /// The buffer range or texel image holding the data.
    pub place: Place,
}

impl Tensor {
    /// A tensor at byte `offset` of `buffer`.
    pub fn in_buffer(desc: TensorDesc, buffer: Arc<wgpu::Buffer>, offset: u64) -> Self {
        Tensor {
            desc,
            place: Place::Buffer { buffer, offset },
        }
    }
    /// The buffer and byte offset holding the data, or `None` for a texel image.
    pub fn buffer(&self) -> Option<(&Arc<wgpu::Buffer>, u64)> {
        match &self.place {
            Place::Buffer { buffer, offset } => Some((buffer, *offset)),
            Place::Texels(_) => None,
        }
    }
    /// The texel image holding the data, if the tensor lives in one.
    pub fn texels(&self) -> Option<&Arc<Texels>> {
        match &self.place {
            Place::Texels(t) => Some(t),
            Place::Buffer { .. } => None,
        }
    }
    /// Whether both tensors are the same GPU memory (a tied embedding and lm_head).
    pub fn same_place(&self, other: &Tensor) -> bool {
        match (&self.place, &other.place) {
            (
                Place::Buffer {
                    buffer: a,
                    offset: x,
                },
                Place::Buffer {
                    buffer: b,
                    offset: y,
                },
            ) => Arc::ptr_eq(a, b) && x == y,
            (Place::Texels(a), Place::Texels(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
    /// Element type.
    pub fn dtype(&self) -> DType {
        self.desc.dtype
    }
    /// Shape, outermost first.
    pub fn shape(&self) -> &[usize] {
        &self.desc.shape
    }
    /// Bytes of the data (see [`TensorDesc::size_bytes`]).
    pub fn size_bytes(&self) -> u64 {
        self.desc.size_bytes()
    }
}

/// A texel image on the device: a tensor's bytes in an `rgba32uint` texture, made and
/// filled by the gpu module (see `gpu/texels.rs` for the layout).
#[derive(Debug)]
pub struct Texels {
    /// The `rgba32uint` texture.
    pub texture: wgpu::Texture,
    /// Its view, as bound to kernels.
    pub view: wgpu::TextureView,
    /// Bytes of tensor data it holds (the rest of the last row is zero).
    pub bytes: u64,
}
