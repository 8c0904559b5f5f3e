//! Test-only: a minimal GGUF metadata reader (key/value section only, no tensors), so tokenizer
//! and chat-template tests do not depend on the model loader.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use fado::loader::gguf::vocab::Meta;

#[derive(Debug, Clone)]
pub enum Val {
    Str(String),
    Int(i64),
    Uint(u64),
    F32(f32),
    F64(f64),
    Bool(bool),
    StrArr(Vec<String>),
    F32Arr(Vec<f32>),
    IntArr(Vec<i64>),
    Other,
}

pub struct GgufMeta {
    pub path: PathBuf,
    pub kv: BTreeMap<String, Val>,
}

fn rd<const N: usize>(r: &mut impl Read) -> [u8; N] {
    let mut b = [0u8; N];
    r.read_exact(&mut b).expect("GGUF truncated");
    b
}
fn rd_u32(r: &mut impl Read) -> u32 {
    u32::from_le_bytes(rd(r))
}
fn rd_u64(r: &mut impl Read) -> u64 {
    u64::from_le_bytes(rd(r))
}
fn rd_str(r: &mut impl Read) -> String {
    let n = rd_u64(r) as usize;
    assert!(n < 1 << 28, "GGUF string too long ({n})");
    let mut b = vec![0u8; n];
    r.read_exact(&mut b).expect("GGUF truncated");
    String::from_utf8(b).expect("GGUF string is not UTF-8")
}
fn rd_scalar(r: &mut impl Read, ty: u32) -> Val {
    match ty {
        0 => Val::Uint(u8::from_le_bytes(rd(r)) as u64),
        1 => Val::Int(i8::from_le_bytes(rd(r)) as i64),
        2 => Val::Uint(u16::from_le_bytes(rd(r)) as u64),
        3 => Val::Int(i16::from_le_bytes(rd(r)) as i64),
        4 => Val::Uint(rd_u32(r) as u64),
        5 => Val::Int(i32::from_le_bytes(rd(r)) as i64),
        6 => Val::F32(f32::from_le_bytes(rd(r))),
        7 => Val::Bool(u8::from_le_bytes(rd(r)) != 0),
        8 => Val::Str(rd_str(r)),
        10 => Val::Uint(rd_u64(r)),
        11 => Val::Int(i64::from_le_bytes(rd(r))),
        12 => Val::F64(f64::from_le_bytes(rd(r))),
        t => panic!("unknown GGUF value type {t}"),
    }
}

impl GgufMeta {
    pub fn read(path: &Path) -> GgufMeta {
        let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut r = BufReader::new(f);
        assert_eq!(
            &rd::<4>(&mut r),
            b"GGUF",
            "{}: not a GGUF file",
            path.display()
        );
        let _version = rd_u32(&mut r);
        let _n_tensors = rd_u64(&mut r);
        let n_kv = rd_u64(&mut r);
        let mut kv = BTreeMap::new();
        for _ in 0..n_kv {
            let key = rd_str(&mut r);
            let ty = rd_u32(&mut r);
            let val = if ty == 9 {
                let ety = rd_u32(&mut r);
                let n = rd_u64(&mut r) as usize;
                let items: Vec<Val> = (0..n).map(|_| rd_scalar(&mut r, ety)).collect();
                match ety {
                    8 => Val::StrArr(
                        items
                            .into_iter()
                            .map(|v| match v {
                                Val::Str(s) => s,
                                _ => unreachable!(),
                            })
                            .collect(),
                    ),
                    6 => Val::F32Arr(
                        items
                            .into_iter()
                            .map(|v| match v {
                                Val::F32(x) => x,
                                _ => unreachable!(),
                            })
                            .collect(),
                    ),
                    0..=5 | 10 | 11 => Val::IntArr(
                        items
                            .into_iter()
                            .map(|v| match v {
                                Val::Int(x) => x,
                                Val::Uint(x) => x as i64,
                                _ => unreachable!(),
                            })
                            .collect(),
                    ),
                    _ => Val::Other,
                }
            } else {
                rd_scalar(&mut r, ty)
            };
            kv.insert(key, val);
        }
        GgufMeta {
            path: path.to_path_buf(),
            kv,
        }
    }

    /// The adapter the runtime's loader will provide: GGUF value → tokenizer `Meta`.
    pub fn get(&self, key: &str) -> Option<Meta<'_>> {
        Some(match self.kv.get(key)? {
            Val::Str(s) => Meta::Str(s),
            Val::Int(i) => Meta::I64(*i),
            Val::Uint(u) => Meta::U64(*u),
            Val::F32(f) => Meta::F32(*f),
            Val::F64(f) => Meta::F32(*f as f32),
            Val::Bool(b) => Meta::Bool(*b),
            Val::StrArr(a) => Meta::StrArray(a.iter().map(String::as_str).collect()),
            Val::F32Arr(a) => Meta::F32Array(a.clone()),
            Val::IntArr(a) => Meta::I32Array(a.iter().map(|&x| x as i32).collect()),
            Val::Other => return None,
        })
    }

    pub fn str(&self, key: &str) -> Option<&str> {
        match self.kv.get(key)? {
            Val::Str(s) => Some(s),
            _ => None,
        }
    }
}
