//! Chat template tests: renders identical to transformers' `apply_chat_template` (fixtures), the
//! template sources (GGUF, chat_template.jinja, tokenizer_config.json), the HF extras
//! (raise_exception, strftime_now, tojson, Python string methods) and the sandbox limits. CPU only.

mod common;
mod gguf_meta;

use common::{default_model, fixture_json, fixtures, scratch};
use gguf_meta::GgufMeta;

use fado::chat_template::{
    pick_config_template, strftime, ChatTemplate, Limits, Message, CHATML_TEMPLATE,
};

fn user(text: &str) -> Vec<Message> {
    vec![Message::new("user", text)]
}

#[test]
fn smollm2_gguf_template_renders_like_transformers() {
    let path = default_model();
    let meta = GgufMeta::read(&path);
    let src = meta
        .str("tokenizer.chat_template")
        .expect("SmolLM2 GGUF has tokenizer.chat_template");
    let exp = fixture_json("smollm2-expected.json");
    assert_eq!(
        src,
        exp["chat_template"].as_str().expect("chat_template"),
        "template read from the GGUF"
    );
    let tmpl = ChatTemplate::with_origin(
        src,
        format!("tokenizer.chat_template in {}", path.display()),
    )
    .expect("compile");
    let tok = &exp["tokenizer"];
    let (bos, eos) = (
        tok["bos_token"].as_str().expect("bos"),
        tok["eos_token"].as_str().expect("eos"),
    );
    let mut n = 0;
    for p in exp["prompts"].as_array().expect("prompts") {
        if p["kind"] != "chat" {
            continue;
        }
        let got = tmpl
            .render(&user(p["text"].as_str().expect("text")), true, bos, eos)
            .expect("render");
        assert_eq!(got, p["rendered_prompt"].as_str().expect("rendered_prompt"));
        n += 1;
    }
    assert!(n >= 2, "fixture has chat prompts");

    // With a system message the default one is not added; without the generation prompt, no
    // trailing assistant header.
    let msgs = vec![
        Message::new("system", "Be brief."),
        Message::new("user", "Hi"),
    ];
    let got = tmpl.render(&msgs, false, bos, eos).expect("render");
    assert_eq!(
        got,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    );
}

#[test]
fn tiny_llama_dir_template_renders_like_transformers() {
    let tmpl = ChatTemplate::from_model_dir(fixtures().join("tiny-llama"))
        .expect("load")
        .expect("tiny-llama ships chat_template.jinja");
    assert!(
        tmpl.origin().ends_with("chat_template.jinja"),
        "{}",
        tmpl.origin()
    );
    let exp = fixture_json("tiny-llama-expected.json");
    let chat = &exp["chat_example"];
    let msgs: Vec<Message> = chat["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            Message::new(
                m["role"].as_str().expect("role"),
                m["content"].as_str().expect("content"),
            )
        })
        .collect();
    let got = tmpl
        .render(&msgs, true, "<s>", "<|im_end|>")
        .expect("render");
    assert_eq!(got, chat["rendered"].as_str().expect("rendered"));
    // The built-in ChatML fallback renders the same format.
    assert_eq!(
        ChatTemplate::chatml()
            .render(&msgs, true, "<s>", "<|im_end|>")
            .expect("render"),
        got
    );
}

#[test]
fn tokenizer_config_sources() {
    let dir = scratch("chat-template", "config-sources");
    // A list of named templates: "default" is picked.
    let cfg = serde_json::json!({"chat_template": [
        {"name": "tool_use", "template": "TOOLS"},
        {"name": "default", "template": "{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"}
    ]});
    std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).expect("write");
    let tmpl = ChatTemplate::from_model_dir(&dir)
        .expect("load")
        .expect("has a template");
    assert_eq!(
        tmpl.render(&user("hi"), false, "<s>", "</s>")
            .expect("render"),
        "<s>[user]hi"
    );
    // A plain string.
    assert_eq!(
        pick_config_template(&serde_json::json!("X")).as_deref(),
        Some("X")
    );
    assert_eq!(
        pick_config_template(&serde_json::json!([{"name": "other", "template": "Y"}])),
        None
    );
    // No template at all.
    std::fs::write(dir.join("tokenizer_config.json"), "{}").expect("write");
    assert!(ChatTemplate::from_model_dir(&dir).expect("load").is_none());
    assert!(CHATML_TEMPLATE.contains("<|im_start|>"));
}

#[test]
fn hf_template_features() {
    // trim_blocks + lstrip_blocks (transformers' settings): block lines leave no blank lines.
    let src = "{% for m in messages %}\n    {% if m.role == 'user' %}\nU:{{ m.content | trim }}\n    {% endif %}\n{% endfor %}";
    let got = ChatTemplate::new(src)
        .expect("compile")
        .render(&user("  hi  "), false, "", "")
        .expect("render");
    assert_eq!(got, "U:hi\n");

    // Python string methods (pycompat), loop controls, namespace, slicing, `is none` on tools.
    let src = "{% set ns = namespace(n=0) %}{% for m in messages %}{% if m.content.startswith('skip') %}{% continue %}{% endif %}{% set ns.n = ns.n + 1 %}{{ m.content.strip().upper() }}|{% endfor %}{{ ns.n }}{% if tools is none %} no-tools{% endif %}{{ messages[1:] | length }}";
    let msgs = vec![
        Message::new("user", " a "),
        Message::new("user", "skip me"),
        Message::new("assistant", "b"),
    ];
    let got = ChatTemplate::new(src)
        .expect("compile")
        .render(&msgs, false, "", "")
        .expect("render");
    assert_eq!(got, "A|B|2 no-tools2");

    // tojson like Python's json.dumps(ensure_ascii=False).
    let src = "{{ {'a': [1, 2.5, none, true], 'b': 'ação \"q\"'} | tojson }}|{{ {'k': 1} | tojson(indent=2) }}";
    let got = ChatTemplate::new(src)
        .expect("compile")
        .render(&[], false, "", "")
        .expect("render");
    assert_eq!(
        got,
        "{\"a\": [1, 2.5, null, true], \"b\": \"ação \\\"q\\\"\"}|{\n  \"k\": 1\n}"
    );

    // strftime_now exists and formats a date.
    let got = ChatTemplate::new("{{ strftime_now('%Y-%m-%d') }}")
        .expect("compile")
        .render(&[], false, "", "")
        .expect("render");
    assert_eq!(got.len(), 10, "{got}");
    assert_eq!(
        strftime(0, "%d %b %Y %H:%M:%S %A %j"),
        "01 Jan 1970 00:00:00 Thursday 001"
    );
    assert_eq!(
        strftime(1_709_210_096, "%d %B %Y, %a %I%p %j"),
        "29 February 2024, Thu 12PM 060"
    );
}

#[test]
fn raise_exception_carries_the_message() {
    let src = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation roles must alternate user/assistant') }}{% endif %}ok";
    let tmpl = ChatTemplate::with_origin(src, "test template").expect("compile");
    assert_eq!(
        tmpl.render(&user("x"), false, "", "").expect("render"),
        "ok"
    );
    let err = tmpl
        .render(&[Message::new("assistant", "x")], false, "", "")
        .expect_err("must raise")
        .to_string();
    assert!(
        err.contains("Conversation roles must alternate user/assistant"),
        "{err}"
    );
    assert!(
        err.contains("test template") && err.contains("line 1"),
        "{err}"
    );
}

#[test]
fn errors_name_source_and_line() {
    let err =
        ChatTemplate::with_origin("line one\n{% if %}\n", "tokenizer.chat_template in x.gguf")
            .expect_err("syntax error")
            .to_string();
    assert!(
        err.contains("tokenizer.chat_template in x.gguf")
            && err.contains("line 2")
            && err.contains("syntax"),
        "{err}"
    );

    let err = ChatTemplate::new("a\nb\n{{ messages[0].content + 1 }}")
        .expect("compile")
        .render(&user("x"), false, "", "")
        .expect_err("type error")
        .to_string();
    assert!(err.contains("line 3"), "{err}");
}

#[test]
fn sandbox_limits_hold() {
    // No loader: include/import fail.
    let err = ChatTemplate::new("{% include 'other.jinja' %}")
        .expect("compile")
        .render(&[], false, "", "")
        .expect_err("include must fail")
        .to_string();
    assert!(
        err.contains("other.jinja") || err.contains("not found"),
        "{err}"
    );

    // Fuel: a long loop is stopped.
    let limits = Limits {
        fuel: 10_000,
        ..Limits::default()
    };
    let err = ChatTemplate::with_limits(
        "{% for i in range(100000) %}{{ i }}{% endfor %}",
        "loop",
        limits,
    )
    .expect("compile")
    .render(&[], false, "", "")
    .expect_err("out of fuel")
    .to_string();
    assert!(err.contains("fuel"), "{err}");

    // Recursion: a self-calling macro is stopped.
    let err = ChatTemplate::new("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}")
        .expect("compile")
        .render(&[], false, "", "")
        .expect_err("recursion limit")
        .to_string();
    assert!(err.contains("recursion"), "{err}");

    // Output size cap.
    let limits = Limits {
        max_output_bytes: 1000,
        ..Limits::default()
    };
    let err = ChatTemplate::with_limits("{% for i in range(500) %}xxxx{% endfor %}", "big", limits)
        .expect("compile")
        .render(&[], false, "", "")
        .expect_err("output cap")
        .to_string();
    assert!(err.contains("1000-byte limit"), "{err}");
}

#[test]
fn templates_that_know_tools_receive_declarations_and_calls_with_object_arguments() {
    use fado::tools::{prompt_messages, Tool, ToolCall};
    // The shape of Qwen 2.5's / Hermes's tool templates, reduced to what is checked.
    let t = ChatTemplate::new(
        "{% if tools %}{% for t in tools %}{{ t | tojson }};{% endfor %}{% endif %}\
         {% for m in messages %}[{{ m.role }}:{{ m.content }}\
         {% if m.tool_calls %}{% for c in m.tool_calls %}\
         <{{ c.id }} {{ c.function.name }} {{ c.function.arguments | tojson }} city={{ c.function.arguments.city }}>\
         {% endfor %}{% endif %}{% if m.tool_call_id %}#{{ m.tool_call_id }}{% endif %}]{% endfor %}",
    )
    .unwrap();
    assert!(t.knows_tools());
    assert!(!ChatTemplate::chatml().knows_tools());
    let tool = Tool {
        name: "get_weather".into(),
        description: Some("Weather now".into()),
        parameters: serde_json::json!({"type": "object", "properties": {"city": {"type": "string"}}}),
    };
    let mut call = Message::new("assistant", "");
    call.tool_calls = vec![ToolCall {
        id: "call_1".into(),
        name: "get_weather".into(),
        arguments: r#"{"city": "Lisbon"}"#.into(),
    }];
    let mut result = Message::new("tool", "18 C");
    result.tool_call_id = Some("call_1".into());
    let msgs = vec![Message::new("user", "Weather?"), call, result];
    let (msgs, decl) = prompt_messages(t.knows_tools(), &msgs, &[tool]);
    let out = t
        .render_with_tools(&msgs, decl.as_deref(), false, "", "")
        .unwrap();
    assert_eq!(
        out,
        "{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": \
         \"Weather now\", \"parameters\": {\"type\": \"object\", \"properties\": {\"city\": \
         {\"type\": \"string\"}}}}};\
         [user:Weather?][assistant:<call_1 get_weather {\"city\": \"Lisbon\"} city=Lisbon>]\
         [tool:18 C#call_1]"
    );
    // Without tools the variable is none, as before.
    let out = t
        .render_with_tools(&user("hi"), None, false, "", "")
        .unwrap();
    assert_eq!(out, "[user:hi]");
}
