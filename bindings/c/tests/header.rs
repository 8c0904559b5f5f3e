//! `include/fado.h` is what cbindgen generates from the current source: a stale header fails
//! here. `FADO_BLESS=1` rewrites it.

use std::path::Path;

#[test]
fn committed_header_is_up_to_date() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config =
        cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header")
        .write(&mut generated);
    let generated = String::from_utf8(generated).expect("UTF-8 header");
    let path = crate_dir.join("../../include/fado.h");
    if std::env::var("FADO_BLESS").as_deref() == Ok("1") {
        std::fs::write(&path, &generated).expect("write include/fado.h");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "include/fado.h is stale: regenerate it with FADO_BLESS=1 cargo test -p fado-capi --test header"
    );
}
