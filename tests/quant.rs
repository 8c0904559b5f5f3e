//! GGUF block formats on the CPU: hand-built blocks with known values for every format, the
//! reference dequantizations of ggml's numpy port (committed fixture), and quantizer error bounds.

use fado::quant::{self, kquants};
use fado::rng::Rng;
use fado::tensor::DType;

const F16_ONE: [u8; 2] = [0x00, 0x3c];
const F16_HALF: [u8; 2] = [0x00, 0x38];
const F16_QUARTER: [u8; 2] = [0x00, 0x34];
const F16_MINUS_ONE: [u8; 2] = [0x00, 0xbc];

fn deq(dtype: DType, bytes: &[u8]) -> Vec<f32> {
    let n = bytes.len() / dtype.block_bytes() * dtype.block_len();
    quant::dequantize(dtype, bytes, n).expect("dequantize")
}

#[test]
fn q8_0_block_dequantizes_to_d_times_signed_bytes() {
    let mut b = F16_HALF.to_vec();
    let q: Vec<i8> = (0..32).map(|i| i as i8 - 16).collect();
    b.extend(q.iter().map(|v| *v as u8));
    b[2 + 31] = 0x80; // -128
    let y = deq(DType::Q8_0, &b);
    assert_eq!(y[0], -8.0);
    assert_eq!(y[16], 0.0);
    assert_eq!(y[30], 7.0);
    assert_eq!(y[31], -64.0);
    for (i, v) in y[..31].iter().enumerate() {
        assert_eq!(*v, 0.5 * (i as f32 - 16.0), "element {i}");
    }
}

#[test]
fn q4_0_block_puts_low_nibbles_first_and_subtracts_8() {
    let mut b = F16_QUARTER.to_vec();
    // byte j: low nibble j, high nibble 15 - j
    b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let y = deq(DType::Q4_0, &b);
    assert_eq!(y[0], -2.0); // (0 - 8) / 4
    assert_eq!(y[15], 1.75); // (15 - 8) / 4
    assert_eq!(y[16], 1.75); // high nibble of byte 0 = 15
    assert_eq!(y[31], -2.0);
    for j in 0..16 {
        assert_eq!(y[j], 0.25 * (j as f32 - 8.0));
        assert_eq!(y[j + 16], 0.25 * (7.0 - j as f32));
    }
}

#[test]
fn q4_1_block_is_d_times_q_plus_m() {
    let mut b = F16_HALF.to_vec();
    b.extend_from_slice(&F16_MINUS_ONE);
    b.extend((0..16u8).map(|j| j | (((j + 1) % 16) << 4)));
    let y = deq(DType::Q4_1, &b);
    assert_eq!(y[0], -1.0);
    assert_eq!(y[15], 6.5);
    assert_eq!(y[16], -0.5);
    assert_eq!(y[31], -1.0); // high nibble of byte 15 = 0
    for j in 0..16 {
        assert_eq!(y[j], 0.5 * j as f32 - 1.0);
        assert_eq!(y[j + 16], 0.5 * ((j + 1) % 16) as f32 - 1.0);
    }
}

/// Scales and mins of the K-quant test blocks: sub-blocks 4..7 use values ≥ 16 so their top two
/// bits (stored in the top bits of bytes 0..8) matter.
const SC: [u8; 8] = [1, 2, 3, 4, 33, 47, 60, 63];
const MN: [u8; 8] = [5, 6, 7, 8, 17, 31, 48, 62];
/// `SC`/`MN` packed by hand:
/// - bytes 0..4: `sc[j] | (sc[j+4] >> 4) << 6` = 1|2<<6, 2|2<<6, 3|3<<6, 4|3<<6;
/// - bytes 4..8: `m[j] | (m[j+4] >> 4) << 6` = 5|1<<6, 6|1<<6, 7|3<<6, 8|3<<6;
/// - bytes 8..12: `(sc[j+4] & 15) | (m[j+4] & 15) << 4` = 0x11, 0xff, 0x0c, 0xef.
const PACKED: [u8; 12] = [129, 130, 195, 196, 69, 70, 199, 200, 0x11, 0xff, 0x0c, 0xef];

fn k_qs() -> Vec<u8> {
    (0..128usize)
        .map(|i| ((i % 16) | (((i * 7) % 16) << 4)) as u8)
        .collect()
}

#[test]
fn k_quant_scale_packing_matches_hand_packed_bytes() {
    assert_eq!(kquants::pack_scale_min(&SC, &MN), PACKED);
    for s in 0..8 {
        assert_eq!(
            kquants::scale_min(s, &PACKED),
            (SC[s], MN[s]),
            "sub-block {s}"
        );
    }
    // Every 6-bit value survives in every position.
    for v in 0..64u8 {
        let sc = [v, 63 - v, v, v ^ 21, v, 63 - v, v ^ 42, v];
        let m = [63 - v, v, v ^ 13, v, 63 - v, v, v, v ^ 50];
        let p = kquants::pack_scale_min(&sc, &m);
        for s in 0..8 {
            assert_eq!(kquants::scale_min(s, &p), (sc[s], m[s]));
        }
    }
}

#[test]
fn q4_k_block_decodes_scales_mins_and_nibble_order() {
    let mut b = F16_ONE.to_vec(); // d = 1
    b.extend_from_slice(&F16_HALF); // dmin = 0.5
    b.extend_from_slice(&PACKED);
    b.extend(k_qs());
    assert_eq!(b.len(), 144);
    let y = deq(DType::Q4K, &b);
    // s=0, l=0: low nibble of qs[0] = 0 → 1·0 − 0.5·5
    assert_eq!(y[0], -2.5);
    // s=1, l=1: high nibble of qs[1] = 7 → 2·7 − 0.5·6
    assert_eq!(y[33], 11.0);
    // s=4, l=3: low nibble of qs[67] = 3 → 33·3 − 0.5·17
    assert_eq!(y[4 * 32 + 3], 90.5);
    // s=7, l=31: high nibble of qs[127] = 127·7 mod 16 = 9 → 63·9 − 0.5·62
    assert_eq!(y[255], 536.0);
    let qs = k_qs();
    for s in 0..8 {
        for l in 0..32 {
            let byte = qs[32 * (s / 2) + l];
            let q = if s % 2 == 0 { byte & 15 } else { byte >> 4 };
            let want = SC[s] as f32 * q as f32 - 0.5 * MN[s] as f32;
            assert_eq!(y[32 * s + l], want, "sub-block {s} element {l}");
        }
    }
}

#[test]
fn q5_k_block_adds_the_high_bit_of_qh_per_sub_block() {
    let qh: Vec<u8> = (0..32)
        .map(|l| if l == 3 { 0xff } else { 1 << (l % 8) })
        .collect();
    let mut b = F16_ONE.to_vec();
    b.extend_from_slice(&F16_HALF);
    b.extend_from_slice(&PACKED);
    b.extend_from_slice(&qh);
    b.extend(k_qs());
    assert_eq!(b.len(), 176);
    let y = deq(DType::Q5K, &b);
    // s=0, l=0: qh[0] bit 0 set → q = 0 + 16 → 16 − 2.5
    assert_eq!(y[0], 13.5);
    // s=1, l=1: qh[1] = 2, bit 1 set → q = 7 + 16 → 2·23 − 3
    assert_eq!(y[33], 43.0);
    // s=1, l=0: qh[0] = 1, bit 1 clear → q = 0 → −3
    assert_eq!(y[32], -3.0);
    // s=4, l=3: qh[3] = 0xff → q = 3 + 16 → 33·19 − 8.5
    assert_eq!(y[4 * 32 + 3], 618.5);
    // s=7, l=31: qh[31] = 0x80 → q = 9 + 16 → 63·25 − 31
    assert_eq!(y[255], 1544.0);
    let qs = k_qs();
    for s in 0..8 {
        for l in 0..32 {
            let byte = qs[32 * (s / 2) + l];
            let lo = if s % 2 == 0 { byte & 15 } else { byte >> 4 };
            let q = lo + 16 * ((qh[l] >> s) & 1);
            let want = SC[s] as f32 * q as f32 - 0.5 * MN[s] as f32;
            assert_eq!(y[32 * s + l], want, "sub-block {s} element {l}");
        }
    }
}

#[test]
fn q6_k_block_combines_ql_qh_and_signed_scales() {
    let ql: Vec<u8> = (0..128usize)
        .map(|i| ((i % 16) | (((i * 5) % 16) << 4)) as u8)
        .collect();
    let qh: Vec<u8> = (0..64usize).map(|i| (i * 29) as u8).collect();
    let scales: [i8; 16] = [
        1, -2, 3, -4, 5, -6, 7, -8, 9, -10, 11, -12, 13, -14, 15, -128,
    ];
    let mut b = ql.clone();
    b.extend_from_slice(&qh);
    b.extend(scales.iter().map(|s| *s as u8));
    b.extend_from_slice(&F16_HALF);
    assert_eq!(b.len(), 210);
    let y = deq(DType::Q6K, &b);
    // element 0: ql[0] low = 0, qh[0] bits 0..2 = 0 → q = −32, scale 1 → 0.5·1·−32
    assert_eq!(y[0], -16.0);
    // element 66 (half 0, quarter 2, l 2): ql[2] high = 10, (qh[2] = 58 >> 4) & 3 = 3
    // → q = 10 + 48 − 32 = 26, scale[4] = 5 → 0.5·5·26
    assert_eq!(y[66], 65.0);
    // element 209 (half 1, quarter 2, l 17): ql[81] high = 5, (qh[49] = 141 >> 4) & 3 = 0
    // → q = −27, scale[13] = −14 → 0.5·−14·−27
    assert_eq!(y[209], 189.0);
    // element 255 (half 1, quarter 3, l 31): ql[127] high = 11, (qh[63] = 35 >> 6) & 3 = 0
    // → q = −21, scale[15] = −128 → 0.5·−128·−21
    assert_eq!(y[255], 1344.0);
    for h in 0..2 {
        for t in 0..4 {
            for l in 0..32 {
                let byte = ql[64 * h + 32 * (t % 2) + l];
                let lo = if t < 2 { byte & 15 } else { byte >> 4 };
                let hi = (qh[32 * h + l] >> (2 * t)) & 3;
                let q = (lo | (hi << 4)) as f32 - 32.0;
                let want = 0.5 * scales[8 * h + 2 * t + l / 16] as f32 * q;
                assert_eq!(y[128 * h + 32 * t + l], want, "half {h} quarter {t} l {l}");
            }
        }
    }
}

fn dtype_named(name: &str) -> DType {
    match name {
        "q8_0" => DType::Q8_0,
        "q4_0" => DType::Q4_0,
        "q4_1" => DType::Q4_1,
        "q4_k" => DType::Q4K,
        "q5_k" => DType::Q5K,
        "q6_k" => DType::Q6K,
        other => panic!("fixture names unknown dtype {other}"),
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn fixture() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/quant-vectors.json"
    );
    let text = std::fs::read_to_string(path).expect("tests/fixtures/quant-vectors.json");
    serde_json::from_str(&text).expect("fixture JSON")
}

#[test]
fn dequantizers_match_ggml_reference_on_random_blocks() {
    let fx = fixture();
    let cases = fx["dequantize"].as_array().expect("dequantize cases");
    assert_eq!(cases.len(), 6, "one case per format");
    for c in cases {
        let dtype = dtype_named(c["dtype"].as_str().unwrap());
        let bytes = hex(c["bytes"].as_str().unwrap());
        let want: Vec<f32> = c["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let got = deq(dtype, &bytes);
        assert_eq!(got.len(), want.len(), "{dtype}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            // Same f32 operations in the same order as the reference: exact.
            assert_eq!(g, w, "{dtype} element {i}");
        }
    }
}

#[test]
fn q8_0_and_q4_0_quantizers_are_byte_exact_with_ggml() {
    let fx = fixture();
    for c in fx["quantize"].as_array().expect("quantize cases") {
        let dtype = dtype_named(c["dtype"].as_str().unwrap());
        let x: Vec<f32> = c["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let got = quant::quantize(dtype, &x).unwrap();
        assert_eq!(got, hex(c["bytes"].as_str().unwrap()), "{dtype}");
    }
}

/// Round-trip `x` through `dtype` and return the dequantized values.
fn round_trip(dtype: DType, x: &[f32]) -> Vec<f32> {
    let b = quant::quantize(dtype, x).unwrap();
    assert_eq!(b.len(), dtype.bytes_for(x.len()));
    deq(dtype, &b)
}

fn test_data(rng: &mut Rng, n: usize) -> Vec<f32> {
    // Blocks of very different magnitudes, some one-sided, some with an outlier.
    (0..n)
        .map(|i| {
            let blk = i / 32;
            let scale = [0.01f32, 1.0, 30.0, 0.2][blk % 4];
            let shift = if blk % 3 == 1 { 2.0 * scale } else { 0.0 };
            let outlier = if i % 97 == 5 { 4.0 } else { 1.0 };
            (rng.normal() * scale + shift) * outlier
        })
        .collect()
}

#[test]
fn q8_0_round_trip_error_is_within_half_a_step() {
    let mut rng = Rng::new(11);
    let x = test_data(&mut rng, 32 * 24);
    let y = round_trip(DType::Q8_0, &x);
    for (xb, yb) in x.chunks(32).zip(y.chunks(32)) {
        let d = xb.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
        for (a, b) in xb.iter().zip(yb) {
            // half a step, plus the f16 rounding of d times |q| ≤ 127
            assert!(
                (a - b).abs() <= d * (0.5 + 127.0 / 2048.0),
                "{a} → {b}, d {d}"
            );
        }
    }
    assert_eq!(round_trip(DType::Q8_0, &[0.0; 32]), vec![0.0; 32]);
}

#[test]
fn q4_0_round_trip_error_is_within_one_step() {
    let mut rng = Rng::new(12);
    let x = test_data(&mut rng, 32 * 24);
    let y = round_trip(DType::Q4_0, &x);
    for (xb, yb) in x.chunks(32).zip(y.chunks(32)) {
        let d = xb.iter().fold(0f32, |m, v| m.max(v.abs())) / 8.0;
        for (a, b) in xb.iter().zip(yb) {
            // half a step, except the value opposite the extreme, clamped at +7 (one step)
            assert!((a - b).abs() <= d * 1.01, "{a} → {b}, d {d}");
        }
    }
}

/// K-quant test data: magnitudes differ across super-blocks by 3000×, and within one
/// super-block by up to 4× (what the 6-bit sub-block scales are for).
fn k_test_data(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let sup = [0.01f32, 1.0, 30.0, 0.2][(i / 256) % 4];
            let sub = [1.0f32, 0.25, 0.5, 1.0, 0.7, 0.3, 1.0, 0.9][(i / 32) % 8];
            let shift = if (i / 32) % 3 == 1 { 2.0 } else { 0.0 };
            let outlier = if i % 97 == 5 { 4.0 } else { 1.0 };
            (rng.normal() + shift) * sup * sub * outlier
        })
        .collect()
}

#[test]
fn q4_k_round_trip_error_is_within_one_step_per_sub_block() {
    let mut rng = Rng::new(13);
    let x = k_test_data(&mut rng, 256 * 8);
    let y = round_trip(DType::Q4K, &x);
    let mut sum_err2 = 0f64;
    let mut sum_naive2 = 0f64;
    for (xs, ys) in x.chunks(32).zip(y.chunks(32)) {
        let lo = xs.iter().fold(0f32, |m, v| m.min(*v));
        let hi = xs.iter().fold(f32::MIN, |m, v| m.max(*v));
        let step = (hi - lo) / 15.0;
        for (a, b) in xs.iter().zip(ys) {
            // Half a step from rounding plus what 6-bit scales and f16 super-scales cost.
            assert!((a - b).abs() <= step + 1e-6, "{a} → {b}, step {step}");
            sum_err2 += ((a - b) as f64).powi(2);
        }
        sum_naive2 += (step as f64).powi(2) / 12.0 * 32.0;
    }
    // Overall within 20% of ideal min–max rounding with exact scales (uniform error, step²/12).
    assert!(
        sum_err2 <= sum_naive2 * 1.2,
        "q4_k squared error {sum_err2} vs min–max rounding {sum_naive2}"
    );
}

#[test]
fn q4_k_sub_block_far_below_its_neighbours_stays_bounded_by_the_super_scale() {
    // A sub-block 3000× smaller than the others: its 6-bit scale rounds to 0, so its error is
    // bounded by the super-block's scale resolution, not its own range.
    let mut rng = Rng::new(14);
    let mut x = test_data(&mut rng, 256);
    for v in &mut x[64..96] {
        *v *= 0.001;
    }
    let y = round_trip(DType::Q4K, &x);
    let max_step = x
        .chunks(32)
        .map(|s| {
            let lo = s.iter().fold(0f32, |m, v| m.min(*v));
            let hi = s.iter().fold(f32::MIN, |m, v| m.max(*v));
            (hi - lo) / 15.0
        })
        .fold(0f32, f32::max);
    for (a, b) in x.iter().zip(&y) {
        assert!((a - b).abs() <= max_step, "{a} → {b}, max step {max_step}");
    }
}

#[test]
fn quantize_rejects_unsupported_formats_and_ragged_lengths() {
    let e = quant::quantize(DType::Q6K, &[0.0; 256])
        .unwrap_err()
        .to_string();
    assert!(e.contains("q6_k") && e.contains("not implemented"), "{e}");
    let e = quant::quantize(DType::Q4K, &[0.0; 200])
        .unwrap_err()
        .to_string();
    assert!(e.contains("200") && e.contains("256"), "{e}");
    let e = quant::dequantize(DType::F16, &[0; 4], 2)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("f16") && e.contains("not a block-quantized"),
        "{e}"
    );
}

#[test]
fn gpu_layout_round_trips_bit_for_bit_and_keeps_the_file_size() {
    // Random bytes in every field (scales included): the repack and its inverse give back the
    // file's bytes, so both dequantize to the same bits; the layout is the GGUF size (0 % over
    // the 5 % budget), as `BYTES_PER_256` states.
    let mut rng = Rng::new(15);
    for (dtype, per_256) in quant::BYTES_PER_256 {
        assert!(per_256 * 100 <= dtype.bytes_for(256) * 105, "{dtype}");
        for (rows, blocks) in [(1usize, 1usize), (3, 5), (7, 11)] {
            let cols = blocks * dtype.block_len();
            let gguf: Vec<u8> = (0..dtype.bytes_for(rows * cols))
                .map(|_| rng.below(256) as u8)
                .collect();
            let gpu = quant::gpu_layout(dtype, rows, cols, &gguf).expect("layout");
            assert_eq!(gpu.len(), gguf.len().div_ceil(4) * 4, "{dtype}");
            let back = quant::gpu_layout_inverse(dtype, rows, cols, &gpu).expect("inverse");
            assert!(back == gguf, "{dtype}[{rows}, {cols}]: bytes differ");
            let a = quant::dequantize(dtype, &gguf, rows * cols).expect("dequantize");
            let b = quant::dequantize(dtype, &back, rows * cols).expect("dequantize");
            let same = a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "{dtype}[{rows}, {cols}]: values differ");
        }
    }
}

#[test]
fn gpu_layout_moves_every_scale_out_of_the_quant_section() {
    // Changing a block's scale bytes in the file changes only the scale section of the layout
    // (so the kernels' quant loads never straddle a scale), and the inverse sees the change.
    let mut rng = Rng::new(16);
    for dtype in DType::BLOCK_FORMATS {
        let (rows, cols) = (2, 2 * dtype.block_len());
        let gguf: Vec<u8> = (0..dtype.bytes_for(rows * cols))
            .map(|_| rng.below(256) as u8)
            .collect();
        let nb = rows * cols / dtype.block_len();
        let q = quant::gpu_sections(dtype, nb)
            .scales_offset
            .expect("scales");
        let scale_bytes: &[usize] = match dtype {
            DType::Q6K => &[208, 192],
            DType::Q4K | DType::Q5K => &[0, 5, 15],
            DType::Q4_1 => &[0, 3],
            _ => &[1],
        };
        let base = quant::gpu_layout(dtype, rows, cols, &gguf).expect("layout");
        for &b in scale_bytes {
            let mut g2 = gguf.clone();
            g2[dtype.block_bytes() + b] ^= 0x21;
            let l2 = quant::gpu_layout(dtype, rows, cols, &g2).expect("layout");
            assert_eq!(l2[..q], base[..q], "{dtype}: byte {b} moved a quant");
            assert_ne!(l2[q..], base[q..], "{dtype}: byte {b} lost");
            let back = quant::gpu_layout_inverse(dtype, rows, cols, &l2).expect("inverse");
            assert!(back == g2, "{dtype}: byte {b}");
        }
    }
}
