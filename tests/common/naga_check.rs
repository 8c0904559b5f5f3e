//! Kernel sources through naga without a device: validation with every capability, and the
//! MSL, HLSL and SPIR-V back ends (the translations wgpu's Metal, DX12 and Vulkan backends
//! make).

/// Parse `src` and run naga's validator with every capability.
pub fn validated(src: &str) -> Result<(naga::Module, naga::valid::ModuleInfo), String> {
    let module = naga::front::wgsl::parse_str(src).map_err(|e| e.emit_to_string(src))?;
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .validate(&module)
    .map_err(|e| format!("validation: {}", e.emit_to_string(src)))?;
    Ok((module, info))
}

/// Validate `src` and translate it to MSL, and to HLSL when `hlsl`.
pub fn translate_to(src: &str, entry: &str, hlsl: bool) -> Result<(), String> {
    let (module, info) = validated(src)?;
    if !module.entry_points.iter().any(|e| e.name == entry) {
        return Err(format!("no entry point `{entry}`"));
    }

    let msl_options = naga::back::msl::Options {
        lang_version: (2, 4),
        fake_missing_bindings: true,
        ..Default::default()
    };
    let msl_pipeline = naga::back::msl::PipelineOptions {
        entry_point: Some((naga::ShaderStage::Compute, entry.to_string())),
        ..Default::default()
    };
    naga::back::msl::write_string(&module, &info, &msl_options, &msl_pipeline)
        .map_err(|e| format!("MSL: {e:?}"))?;
    if !hlsl {
        return Ok(());
    }

    let hlsl_options = naga::back::hlsl::Options {
        shader_model: naga::back::hlsl::ShaderModel::V6_2,
        fake_missing_bindings: true,
        ..Default::default()
    };
    let mut hlsl = String::new();
    let hlsl_pipeline = naga::back::hlsl::PipelineOptions {
        entry_point: Some((naga::ShaderStage::Compute, entry.to_string())),
    };
    naga::back::hlsl::Writer::new(&mut hlsl, &hlsl_options, &hlsl_pipeline)
        .write(&module, &info, None)
        .map_err(|e| format!("HLSL: {e:?}"))?;
    Ok(())
}

/// SPIR-V (Vulkan) of a WGSL source, after naga's validation.
pub fn to_spirv(src: &str, entry: &str) -> Result<(), String> {
    let (module, info) = validated(src)?;
    let pipeline = naga::back::spv::PipelineOptions {
        shader_stage: naga::ShaderStage::Compute,
        entry_point: entry.to_string(),
    };
    naga::back::spv::write_vec(&module, &info, &Default::default(), Some(&pipeline))
        .map_err(|e| format!("SPIR-V: {e:?}"))?;
    Ok(())
}
