//! Embeds every `shaders/*.wgsl` file into the binary (see `gpu::shader::SOURCES`).
use std::fmt::Write;

fn main() {
    println!("cargo:rerun-if-changed=shaders");
    let mut names: Vec<String> = std::fs::read_dir("shaders")
        .expect("shaders/ directory")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wgsl"))
        .collect();
    names.sort();
    let mut out = String::from("&[\n");
    for n in names {
        println!("cargo:rerun-if-changed=shaders/{n}");
        writeln!(
            out,
            "    ({n:?}, include_str!(concat!(env!(\"CARGO_MANIFEST_DIR\"), \"/shaders/{n}\"))),"
        )
        .unwrap();
    }
    out.push(']');
    let dst = std::path::Path::new(&std::env::var("OUT_DIR").unwrap()).join("shaders.rs");
    std::fs::write(dst, out).unwrap();
}
