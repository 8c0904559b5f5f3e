//! Test data on disk (no GPU): the committed fixtures, the default model, scratch folders, the
//! reference JSON files' arrays and raw float tensors' values.

use std::path::{Path, PathBuf};

use fado::tensor::DType;
use serde_json::Value;

/// The committed fixtures folder, tests/fixtures.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A path under tests/fixtures.
pub fn fixture(p: &str) -> PathBuf {
    fixtures().join(p)
}

/// A JSON fixture (e.g. the transformers references `*-expected.json`), parsed.
pub fn fixture_json(name: &str) -> Value {
    let p = fixture(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A JSON array of token ids.
pub fn json_ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected an id list, got {v}"))
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

/// A JSON array of numbers as f32 (logits, reference values).
pub fn json_f32s(v: &Value) -> Vec<f32> {
    json_f64s(v).into_iter().map(|x| x as f32).collect()
}

/// A JSON array of numbers as f64 (e.g. the references' top-2 logit margins).
pub fn json_f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected a number list, got {v}"))
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

/// The values of a raw little-endian f32, f16 or bf16 tensor.
pub fn float_values(dtype: DType, b: &[u8]) -> Vec<f32> {
    match dtype {
        DType::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        DType::F16 => b
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        DType::BF16 => b
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        d => panic!("float_values: {d} is not a float type"),
    }
}

/// SmolLM2-135M-Instruct Q4_1 (~90 MB, not in git): `FADO_DEFAULT_MODEL`, else whatever
/// `scripts/fetch-default-model.sh` prints (it downloads into the cache on first use).
/// Panics with a clear message when neither works — these tests never pass silently.
pub fn default_model() -> PathBuf {
    if let Ok(p) = std::env::var("FADO_DEFAULT_MODEL") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "FADO_DEFAULT_MODEL={} does not exist",
            p.display()
        );
        return p;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fetch-default-model.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = stdout.lines().last().map(str::trim).unwrap_or("");
    if !out.status.success() || path.is_empty() || !Path::new(path).is_file() {
        panic!(
            "the default model (SmolLM2-135M-Instruct.Q4_1.gguf) is not available: {} failed ({}):\n{}\n\
             Set FADO_DEFAULT_MODEL=/path/to/SmolLM2-135M-Instruct.Q4_1.gguf or allow the download.",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    PathBuf::from(path)
}

/// A fresh, empty scratch folder (`fado-<tag>-<pid>-<name>` in the temp dir), removed when it
/// goes out of scope after a pass (kept for a look when the test fails).
pub struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub fn scratch(tag: &str, name: &str) -> Scratch {
    let d = std::env::temp_dir().join(format!("fado-{tag}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create scratch dir");
    Scratch(d)
}
