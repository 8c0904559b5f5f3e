//! The request fields of structured output and function calling: `response_format`, `tools`,
//! `tool_choice` and an assistant message's `tool_calls`. Their shape is checked here, each
//! error naming the field; schemas are compiled later, against the model's vocabulary.

use serde_json::Value;

use super::request::{kind_of, Obj};
use super::ApiError;
use crate::constrain::GrammarSpec;
use crate::tools::{valid_name, Tool, ToolCall, ToolChoice};

/// `response_format`: `{"type": "text"}` (or absent), `{"type": "json_object"}`, or
/// `{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`. The schema is
/// compiled later (against the model's vocabulary); here only its shape is checked.
pub(super) fn response_format_param(obj: &Obj) -> Result<Option<GrammarSpec>, ApiError> {
    const P: &str = "response_format";
    let rf = match obj.get(P) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(rf)) => rf,
        Some(v) => {
            return Err(ApiError::invalid(format!(
                "`{P}` must be an object such as {{\"type\": \"json_object\"}}, got {}",
                kind_of(v)
            ))
            .param(P)
            .code("invalid_type"))
        }
    };
    match rf.get("type").and_then(Value::as_str) {
        None | Some("text") => Ok(None),
        Some("json_object") => Ok(Some(GrammarSpec::JsonObject)),
        Some("json_schema") => {
            let js = match rf.get("json_schema") {
                Some(Value::Object(js)) => js,
                _ => {
                    return Err(ApiError::invalid(
                        "`response_format.json_schema` is required with type json_schema: \
                         {\"name\": …, \"schema\": {…}}",
                    )
                    .param("response_format.json_schema"))
                }
            };
            if let Some(n) = js.get("name") {
                if !n.as_str().is_some_and(valid_name) {
                    return Err(ApiError::invalid(
                        "`response_format.json_schema.name` must be 1 to 64 letters, digits, \
                         underscores or dashes",
                    )
                    .param("response_format.json_schema.name"));
                }
            }
            match js.get("schema") {
                Some(v @ (Value::Object(_) | Value::Bool(_))) => {
                    Ok(Some(GrammarSpec::JsonSchema(v.clone())))
                }
                None | Some(Value::Null) => Err(ApiError::invalid(
                    "`response_format.json_schema.schema` is required: the JSON schema the \
                     answer must follow",
                )
                .param("response_format.json_schema.schema")),
                Some(v) => Err(ApiError::invalid(format!(
                    "`response_format.json_schema.schema` must be a JSON schema object, got {}",
                    kind_of(v)
                ))
                .param("response_format.json_schema.schema")
                .code("invalid_type")),
            }
        }
        Some(other) => Err(ApiError::invalid(format!(
            "`response_format.type` = {other:?} is not one of text, json_object, json_schema"
        ))
        .param("response_format.type")),
    }
}

/// `tools`: a list of `{"type": "function", "function": {name, description?, parameters?,
/// strict?}}`. Parameter schemas are compiled later; here their shape is checked.
pub(super) fn tools_param(obj: &Obj) -> Result<Vec<Tool>, ApiError> {
    let list = match obj.get("tools") {
        None | Some(Value::Null) => return Ok(vec![]),
        Some(Value::Array(a)) => a,
        Some(v) => {
            return Err(ApiError::invalid(format!(
                "`tools` must be a list of {{\"type\": \"function\", \"function\": {{…}}}}, got {}",
                kind_of(v)
            ))
            .param("tools")
            .code("invalid_type"))
        }
    };
    let mut tools: Vec<Tool> = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let at = |f: &str| format!("tools[{i}]{f}");
        let bad = |f: &str, msg: String| Err(ApiError::invalid(msg).param(&at(f)));
        let Some(t) = t.as_object() else {
            return bad("", format!("`{}` must be an object", at("")));
        };
        match t.get("type").and_then(Value::as_str) {
            Some("function") => {}
            other => {
                return bad(
                    ".type",
                    format!(
                        "`{}` = {other:?}: only \"function\" tools are supported",
                        at(".type")
                    ),
                )
            }
        }
        let Some(f) = t.get("function").and_then(Value::as_object) else {
            return bad(
                ".function",
                format!(
                    "`{}` is required: {{name, description, parameters}}",
                    at(".function")
                ),
            );
        };
        let name = match f.get("name").and_then(Value::as_str) {
            Some(n) if valid_name(n) => n.to_string(),
            _ => {
                return bad(
                    ".function.name",
                    format!(
                        "`{}` must be 1 to 64 letters, digits, underscores or dashes",
                        at(".function.name")
                    ),
                )
            }
        };
        if tools.iter().any(|x| x.name == name) {
            return bad(
                ".function.name",
                format!(
                    "`{}`: the function {name:?} is declared twice",
                    at(".function.name")
                ),
            );
        }
        let description = match f.get("description") {
            None | Some(Value::Null) => None,
            Some(Value::String(d)) => Some(d.clone()),
            Some(_) => {
                return bad(
                    ".function.description",
                    format!("`{}` must be a string", at(".function.description")),
                )
            }
        };
        let parameters = match f.get("parameters") {
            None | Some(Value::Null) => serde_json::json!({"type": "object", "properties": {}}),
            Some(p @ Value::Object(_)) => p.clone(),
            Some(_) => {
                return bad(
                    ".function.parameters",
                    format!(
                        "`{}` must be a JSON schema object",
                        at(".function.parameters")
                    ),
                )
            }
        };
        tools.push(Tool {
            name,
            description,
            parameters,
        });
    }
    Ok(tools)
}

/// `tool_choice`: `"none"`, `"auto"` (the default), `"required"`, or `{"type": "function",
/// "function": {"name"}}` naming a declared function.
pub(super) fn tool_choice_param(obj: &Obj, tools: &[Tool]) -> Result<ToolChoice, ApiError> {
    const P: &str = "tool_choice";
    let bad = |msg: String| Err(ApiError::invalid(msg).param(P));
    let choice = match obj.get(P) {
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            other => {
                return bad(format!(
                    "`tool_choice` = {other:?} is not one of none, auto, required, or \
                     {{\"type\": \"function\", \"function\": {{\"name\": …}}}}"
                ))
            }
        },
        Some(Value::Object(o)) => match o
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
        {
            Some(n) => ToolChoice::Function(n.to_string()),
            None => {
                return bad(
                    "`tool_choice` must name a function: {\"type\": \"function\", \
                     \"function\": {\"name\": …}}"
                        .into(),
                )
            }
        },
        Some(v) => {
            return bad(format!(
                "`tool_choice` must be a string or an object, got {}",
                kind_of(v)
            ))
        }
    };
    match &choice {
        ToolChoice::Required if tools.is_empty() => {
            bad("`tool_choice` = \"required\" needs `tools` to choose from".into())
        }
        ToolChoice::Function(n) if !tools.iter().any(|t| &t.name == n) => bad(format!(
            "`tool_choice` names the function {n:?}, which `tools` does not declare"
        )),
        _ => Ok(choice),
    }
}

/// An assistant message's `tool_calls`: `[{id, type: "function", function: {name,
/// arguments}}]` (arguments a JSON string, as OpenAI sends them; an object is accepted too).
pub(super) fn message_tool_calls(v: Option<&Value>, i: usize) -> Result<Vec<ToolCall>, ApiError> {
    let p = format!("messages[{i}].tool_calls");
    let list = match v {
        None | Some(Value::Null) => return Ok(vec![]),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(ApiError::invalid(format!("`{p}` must be a list")).param(&p)),
    };
    let mut calls = Vec::with_capacity(list.len());
    for (j, c) in list.iter().enumerate() {
        let f = c.get("function");
        let name = f.and_then(|f| f.get("name")).and_then(Value::as_str);
        let arguments = match f.and_then(|f| f.get("arguments")) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(v @ Value::Object(_)) => Some(v.to_string()),
            None | Some(Value::Null) => Some("{}".to_string()),
            Some(_) => None,
        };
        let (Some(name), Some(arguments)) = (name, arguments) else {
            return Err(ApiError::invalid(format!(
                "`{p}[{j}]` must be {{\"id\", \"type\": \"function\", \"function\": \
                 {{\"name\", \"arguments\"}}}}"
            ))
            .param(&format!("{p}[{j}]")));
        };
        calls.push(ToolCall {
            id: c
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            name: name.to_string(),
            arguments,
        });
    }
    Ok(calls)
}

#[cfg(test)]
mod tests {
    use super::super::request::parse_chat;
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn response_formats_parse_and_bad_ones_name_the_field() {
        let m = r#""messages":[{"role":"user","content":"hi"}]"#;
        let chat = |extra: &str| parse_chat(format!("{{{m},{extra}}}").as_bytes());
        let rf = |extra: &str| chat(extra).unwrap().gen.response_format;
        assert_eq!(rf(r#""response_format":{"type":"text"}"#), None);
        assert_eq!(
            rf(r#""response_format":{"type":"json_object"}"#),
            Some(GrammarSpec::JsonObject)
        );
        assert_eq!(
            rf(
                r#""response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"integer"},"strict":true}}"#
            ),
            Some(GrammarSpec::JsonSchema(
                serde_json::json!({"type":"integer"})
            ))
        );
        for (extra, param) in [
            (r#""response_format":"json""#, "response_format"),
            (
                r#""response_format":{"type":"yaml"}"#,
                "response_format.type",
            ),
            (
                r#""response_format":{"type":"json_schema"}"#,
                "response_format.json_schema",
            ),
            (
                r#""response_format":{"type":"json_schema","json_schema":{"name":"x"}}"#,
                "response_format.json_schema.schema",
            ),
            (
                r#""response_format":{"type":"json_schema","json_schema":{"name":"x","schema":[1]}}"#,
                "response_format.json_schema.schema",
            ),
            (
                r#""response_format":{"type":"json_schema","json_schema":{"name":"a b","schema":{}}}"#,
                "response_format.json_schema.name",
            ),
        ] {
            let e = chat(extra).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert_eq!(e.param.as_deref(), Some(param), "{extra}: {}", e.message);
        }
    }

    #[test]
    fn tools_parse_and_malformed_ones_name_the_entry() {
        let m = r#""messages":[{"role":"user","content":"hi"}]"#;
        let chat = |extra: &str| parse_chat(format!("{{{m},{extra}}}").as_bytes());
        let tool = r#"{"type":"function","function":{"name":"get_weather","description":"d","parameters":{"type":"object"}}}"#;
        let r = chat(&format!(r#""tools":[{tool}],"tool_choice":"required""#)).unwrap();
        assert_eq!(r.tools[0].name, "get_weather");
        assert_eq!(r.tool_choice, ToolChoice::Required);
        let r = chat(&format!(
            r#""tools":[{tool}],"tool_choice":{{"type":"function","function":{{"name":"get_weather"}}}}"#
        ))
        .unwrap();
        assert_eq!(r.tool_choice, ToolChoice::Function("get_weather".into()));
        assert_eq!(
            chat(r#""tool_choice":"none""#).unwrap().tool_choice,
            ToolChoice::None
        );
        for (extra, param) in [
            (r#""tools":{}"#.to_string(), "tools"),
            (r#""tools":[3]"#.into(), "tools[0]"),
            (r#""tools":[{"type":"retrieval"}]"#.into(), "tools[0].type"),
            (
                r#""tools":[{"type":"function"}]"#.into(),
                "tools[0].function",
            ),
            (
                r#""tools":[{"type":"function","function":{"name":"bad name"}}]"#.into(),
                "tools[0].function.name",
            ),
            (
                r#""tools":[{"type":"function","function":{"name":"f","parameters":"x"}}]"#.into(),
                "tools[0].function.parameters",
            ),
            (
                format!(r#""tools":[{tool},{tool}]"#),
                "tools[1].function.name",
            ),
            (r#""tool_choice":"required""#.into(), "tool_choice"),
            (r#""tool_choice":"always""#.into(), "tool_choice"),
            (
                format!(
                    r#""tools":[{tool}],"tool_choice":{{"type":"function","function":{{"name":"other"}}}}"#
                ),
                "tool_choice",
            ),
            (
                format!(
                    r#""tools":[{tool}],"tool_choice":"required","response_format":{{"type":"json_object"}}"#
                ),
                "response_format",
            ),
        ] {
            let e = chat(&extra).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{extra}: {}", e.message);
        }
    }

    #[test]
    fn tool_messages_carry_calls_and_ids() {
        let r = parse_chat(
            br#"{"messages":[{"role":"user","content":"w?"},
                {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Lisbon\"}"}}]},
                {"role":"tool","tool_call_id":"call_1","content":"18 C"}]}"#,
        )
        .unwrap();
        assert_eq!(r.messages[1].content, "");
        assert_eq!(r.messages[1].tool_calls[0].name, "get_weather");
        assert_eq!(
            r.messages[1].tool_calls[0].arguments,
            r#"{"city":"Lisbon"}"#
        );
        assert_eq!(r.messages[2].tool_call_id.as_deref(), Some("call_1"));
        let e = parse_chat(
            br#"{"messages":[{"role":"assistant","content":"","tool_calls":[{"id":"c"}]}]}"#,
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].tool_calls[0]"));
    }
}
