//! What the Vulkan adapter offers: prints every adapter (driver, wgpu features, cooperative-matrix
//! configurations) and opens the test device. Passes on any adapter (Debian 12's Mesa 22.3
//! lavapipe included). With `FADO_EXPECT_COOPMAT=1` it also requires an adapter with
//! `EXPERIMENTAL_COOPERATIVE_MATRIX` whose driver is Mesa 26 — the check that
//! `FADO_EXPECT_COOPMAT=1 scripts/mesa26.sh test --test mesa26_caps -- --nocapture` really
//! runs on the Mesa 26.1 root.

use fado::gpu::{GpuContext, GpuOptions};

fn expect_coopmat() -> bool {
    std::env::var("FADO_EXPECT_COOPMAT").as_deref() == Ok("1")
}

#[test]
fn adapters_and_features() {
    let adapters = GpuContext::list_adapters();
    for a in &adapters {
        println!(
            "[{}] {} ({}, {}) driver: {}\n    features: {}",
            a.index,
            a.name,
            a.backend,
            a.device_type,
            a.driver,
            a.features.join(", ")
        );
    }
    let ctx = GpuContext::new(&GpuOptions::from_env()).expect("open the test adapter");
    let info = &ctx.info;
    let features = ctx.adapter.features();
    let coopmat = ctx.adapter.cooperative_matrix_properties();
    println!(
        "test adapter: {} — driver `{}`, driver_info `{}`",
        info.name, info.driver, info.driver_info
    );
    println!(
        "all adapter features: {}",
        features
            .iter_names()
            .map(|(n, _)| n)
            .collect::<Vec<_>>()
            .join(", ")
    );
    for p in &coopmat {
        println!(
            "cooperative matrix: {}×{}×{} {:?} → {:?}{}",
            p.m_size,
            p.n_size,
            p.k_size,
            p.ab_type,
            p.cr_type,
            if p.saturating_accumulation {
                " (saturating)"
            } else {
                ""
            }
        );
    }
    println!("caps: {:?}", ctx.caps);

    if expect_coopmat() {
        assert!(
            features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX),
            "FADO_EXPECT_COOPMAT=1 but `{}` ({}) lacks EXPERIMENTAL_COOPERATIVE_MATRIX; \
             run through scripts/mesa26.sh",
            info.name,
            info.driver_info
        );
        assert!(
            !coopmat.is_empty(),
            "EXPERIMENTAL_COOPERATIVE_MATRIX without any configuration"
        );
        assert!(
            info.driver_info.contains("Mesa 26"),
            "FADO_EXPECT_COOPMAT=1 expects Mesa 26, the driver reports `{}`",
            info.driver_info
        );
    }
}
