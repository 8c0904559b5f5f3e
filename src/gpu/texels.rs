//! Texel images: a tensor's bytes, in their usual GPU layout, held in a 2-D `rgba32uint`
//! texture — [`TEXEL_ROW`] texels of 16 bytes per row, the last row padded with zeros — so
//! that word `i` of the tensor is component `i % 4` of texel `i / 4`.
//!
//! Why: weight matrices on CPU devices live here. Mesa's lavapipe (22.3) turns every
//! storage-buffer load into a loop over the SIMD lanes with a branch per lane, while a texel
//! fetch is one vector gather; a Q4_1 GEMV reads its weights about 2× faster as texels
//! (BENCHMARKS.md). The kernels fetch them with `texel()` of `shaders/common.wgsl`.

use super::GpuContext;
use crate::error::{Error, Result};
use crate::tensor::{Place, Tensor, TensorDesc, Texels};
use std::sync::Arc;

/// Texels (16 bytes each) per row of a texel image; `texel()` in `shaders/common.wgsl`
/// splits an index with it.
pub const TEXEL_ROW: u32 = 4096;
const TEXEL_BYTES: u64 = 16;

/// Width and height in texels of the image that holds `bytes`.
pub fn extent(bytes: u64) -> (u64, u64) {
    let texels = bytes.div_ceil(TEXEL_BYTES).max(1);
    let row = TEXEL_ROW as u64;
    if texels <= row {
        (texels, 1)
    } else {
        (row, texels.div_ceil(row))
    }
}

/// Bytes per row of a buffer side of a texture copy for rows of `w` texels: wgpu wants
/// multiples of 256 (`COPY_BYTES_PER_ROW_ALIGNMENT`).
fn copy_pitch(w: u64) -> u64 {
    (w * TEXEL_BYTES).div_ceil(wgpu::COPY_BYTES_PER_ROW_ALIGNMENT as u64)
        * wgpu::COPY_BYTES_PER_ROW_ALIGNMENT as u64
}

impl GpuContext {
    /// Whether `bytes` fit one texel image on this device.
    pub fn texels_fit(&self, bytes: u64) -> bool {
        let (w, h) = extent(bytes);
        w <= self.caps.max_texture_2d as u64 && h <= self.caps.max_texture_2d as u64
    }

    fn texel_image(&self, label: &str, bytes: u64) -> Result<Texels> {
        let (w, h) = extent(bytes);
        if !self.texels_fit(bytes) {
            return Err(Error::OutOfMemory {
                what: format!("texel image `{label}` ({w} × {h} texels)"),
                needed: bytes,
                available: TEXEL_BYTES * TEXEL_ROW as u64 * self.caps.max_texture_2d as u64,
                hint: " (the adapter's max_texture_dimension_2d); use a quantized model".into(),
            });
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let texture = self.device.create_texture(&wgpu::TextureDescriptor {
            label: Some(label),
            size: wgpu::Extent3d {
                width: w as u32,
                height: h as u32,
                depth_or_array_layers: 1,
            },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: wgpu::TextureFormat::Rgba32Uint,
            usage: wgpu::TextureUsages::TEXTURE_BINDING
                | wgpu::TextureUsages::COPY_DST
                | wgpu::TextureUsages::COPY_SRC,
            view_formats: &[],
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::OutOfMemory {
                what: format!("allocating texel image `{label}`"),
                needed: w * h * TEXEL_BYTES,
                available: self.caps.max_buffer,
                hint: format!(" ({e}); use a smaller --ctx or a quantized model"),
            });
        }
        let view = texture.create_view(&Default::default());
        Ok(Texels {
            texture,
            view,
            bytes,
        })
    }

    /// A tensor holding `bytes` (already in the dtype's GPU layout) as a texel image.
    pub fn upload_texels(&self, label: &str, desc: TensorDesc, bytes: &[u8]) -> Result<Tensor> {
        super::context::check_upload(label, &desc, bytes)?;
        let img = self.texel_image(label, desc.size_bytes())?;
        self.write_texels(&img, bytes);
        Ok(Tensor {
            desc,
            place: Place::Texels(Arc::new(img)),
        })
    }

    /// `bytes` into an image from its first texel: whole rows in one write, the rest of the
    /// last row (zero-padded to a whole texel) in another.
    pub(crate) fn write_texels(&self, img: &Texels, bytes: &[u8]) {
        let row_bytes = TEXEL_ROW as usize * TEXEL_BYTES as usize;
        let full_rows = bytes.len() / row_bytes;
        let (w, _) = extent(img.bytes);
        let write = |data: &[u8], y: usize, width: u64, height: usize| {
            self.queue.write_texture(
                wgpu::TexelCopyTextureInfo {
                    texture: &img.texture,
                    mip_level: 0,
                    origin: wgpu::Origin3d {
                        x: 0,
                        y: y as u32,
                        z: 0,
                    },
                    aspect: wgpu::TextureAspect::All,
                },
                data,
                wgpu::TexelCopyBufferLayout {
                    offset: 0,
                    bytes_per_row: Some((width * TEXEL_BYTES) as u32),
                    rows_per_image: None,
                },
                wgpu::Extent3d {
                    width: width as u32,
                    height: height as u32,
                    depth_or_array_layers: 1,
                },
            );
        };
        if full_rows > 0 {
            write(&bytes[..full_rows * row_bytes], 0, w, full_rows);
        }
        let rest = &bytes[full_rows * row_bytes..];
        if !rest.is_empty() {
            let mut v = rest.to_vec();
            v.resize(
                rest.len().div_ceil(TEXEL_BYTES as usize) * TEXEL_BYTES as usize,
                0,
            );
            write(&v, full_rows, (v.len() as u64) / TEXEL_BYTES, 1);
        }
    }

    /// A texel-image copy of a buffer tensor (the tensor itself is left as it is).
    pub fn to_texels(&self, t: &Tensor) -> Result<Tensor> {
        let Some((buffer, offset)) = t.buffer() else {
            return Ok(t.clone());
        };
        let size = t.size_bytes();
        let img = self.texel_image("texels", size)?;
        let (w, h) = extent(size);
        // Through a zeroed staging buffer of whole rows: the copy reads whole texels, wants
        // its source offset aligned to one and rows 256-byte aligned (only a one-row image
        // has a shorter row, and its data is contiguous either way).
        let pitch = copy_pitch(w);
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("texels staging"),
            size: pitch * h,
            usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(buffer, offset, &staging, 0, size);
        enc.copy_buffer_to_texture(
            wgpu::TexelCopyBufferInfo {
                buffer: &staging,
                layout: wgpu::TexelCopyBufferLayout {
                    offset: 0,
                    bytes_per_row: Some(pitch as u32),
                    rows_per_image: None,
                },
            },
            img.texture.as_image_copy(),
            img.texture.size(),
        );
        self.queue.submit(Some(enc.finish()));
        Ok(Tensor {
            desc: t.desc.clone(),
            place: Place::Texels(Arc::new(img)),
        })
    }

    /// Bytes `byte_offset .. byte_offset + len` of a texel image, back on the host.
    pub(crate) fn read_texels(&self, img: &Texels, byte_offset: u64, len: u64) -> Result<Vec<u8>> {
        let (w, h) = extent(img.bytes);
        let pitch = copy_pitch(w);
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: pitch * h,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.device.create_command_encoder(&Default::default());
        enc.copy_texture_to_buffer(
            img.texture.as_image_copy(),
            wgpu::TexelCopyBufferInfo {
                buffer: &staging,
                layout: wgpu::TexelCopyBufferLayout {
                    offset: 0,
                    bytes_per_row: Some(pitch as u32),
                    rows_per_image: None,
                },
            },
            img.texture.size(),
        );
        self.queue.submit(Some(enc.finish()));
        let all = self.map_read(&staging, pitch * h)?;
        let row = (w * TEXEL_BYTES) as usize;
        let mut packed = Vec::with_capacity(row * h as usize);
        for r in all.chunks(pitch as usize) {
            packed.extend_from_slice(&r[..row]);
        }
        let end = (byte_offset + len).min(packed.len() as u64) as usize;
        Ok(packed[(byte_offset as usize).min(end)..end].to_vec())
    }
}
