//! Tool (function) calling: the functions a request declares, how a conversation that uses
//! them becomes a prompt, the grammar that forces a call, and how an answer becomes calls.
//!
//! The call syntax is Hermes's, which Qwen 2.5, Hermes and many fine-tunes are trained on:
//!
//! ```text
//! <tool_call>
//! {"name": "get_weather", "arguments": {"city": "Lisbon"}}
//! </tool_call>
//! ```
//!
//! * **Templates that know tools** (their source mentions `tools`) receive the declarations as
//!   transformers passes them (`tools`: a list of `{"type": "function", "function": {name,
//!   description, parameters}}`), and the messages' `tool_calls` with `arguments` as an object.
//! * **Templates that do not** (SmolLM2's, plain ChatML) get the generic fallback
//!   ([`prompt_messages`]): the declarations and the call syntax are appended to the system
//!   message, an assistant's earlier calls are written as `<tool_call>` blocks in its text, and
//!   tool results become a user turn of `<tool_response>` blocks (as Qwen 2.5's template does).
//!
//! Answers are parsed by [`split_tool_calls`]: `<tool_call>` blocks, or — as Llama 3.1 answers —
//! the whole answer one JSON object `{"name", "parameters" | "arguments"}` naming a declared
//! function. Anything that does not parse stays text.
//!
//! When a call is required (`tool_choice` `required` or a named function), [`call_grammar`]
//! constrains the answer to one `<tool_call>` block whose JSON validates against the function's
//! parameter schema.

#![warn(missing_docs)]

use serde_json::{json, Value};

use crate::chat_template::Message;
pub use crate::chat_template::ToolCall;
use crate::constrain::GrammarSpec;

/// Start of a call block.
pub const CALL_OPEN: &str = "<tool_call>";
/// End of a call block.
pub const CALL_CLOSE: &str = "</tool_call>";

/// A function the model may call.
#[derive(Clone, Debug, PartialEq)]
pub struct Tool {
    /// The function's name (`[A-Za-z0-9_-]{1,64}`, as OpenAI requires).
    pub name: String,
    /// What it does, for the model.
    pub description: Option<String>,
    /// Its arguments as a JSON schema (an object schema; `{"type": "object"}` when not given).
    pub parameters: Value,
}

impl Tool {
    /// The declaration in OpenAI's (and transformers') shape.
    pub fn declaration(&self) -> Value {
        let mut f = serde_json::Map::new();
        f.insert("name".into(), json!(self.name));
        if let Some(d) = &self.description {
            f.insert("description".into(), json!(d));
        }
        f.insert("parameters".into(), self.parameters.clone());
        json!({"type": "function", "function": f})
    }
}

/// Whether and which function the model must call.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum ToolChoice {
    /// Never parse calls (the declarations still reach the prompt, as vLLM does).
    None,
    /// The model decides; calls in its answer are parsed.
    #[default]
    Auto,
    /// The answer must be a call of one of the functions.
    Required,
    /// The answer must be a call of this function.
    Function(String),
}

/// A call as a Hermes `<tool_call>` block (arguments as an object when they parse).
fn call_block(c: &ToolCall) -> String {
    format!(
        "{CALL_OPEN}\n{}\n{CALL_CLOSE}",
        json!({"name": c.name, "arguments": c.arguments_value()})
    )
}

/// Is `name` a valid function name (`[A-Za-z0-9_-]{1,64}`)?
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The conversation a template renders: unchanged when the template knows tools (`native`),
/// otherwise rewritten for the generic fallback (see the module docs). With `native` the
/// declarations are returned for the template's `tools` variable.
pub fn prompt_messages(
    native: bool,
    messages: &[Message],
    tools: &[Tool],
) -> (Vec<Message>, Option<Vec<Value>>) {
    if native {
        let decl = (!tools.is_empty()).then(|| tools.iter().map(Tool::declaration).collect());
        return (messages.to_vec(), decl);
    }
    let mut out: Vec<Message> = Vec::with_capacity(messages.len() + 1);
    if !tools.is_empty() {
        let text = fallback_system_text(tools);
        match messages.first() {
            Some(m) if m.role == "system" => {
                out.push(Message::new("system", format!("{}\n\n{text}", m.content)))
            }
            _ => out.push(Message::new("system", text)),
        }
    }
    let skip =
        usize::from(!tools.is_empty() && messages.first().is_some_and(|m| m.role == "system"));
    for m in &messages[skip..] {
        match m.role.as_str() {
            "assistant" if !m.tool_calls.is_empty() => {
                let mut text = m.content.clone();
                for c in &m.tool_calls {
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    text.push_str(&call_block(c));
                }
                out.push(Message::new("assistant", text));
            }
            "tool" => {
                let block = format!("<tool_response>\n{}\n</tool_response>", m.content);
                // Consecutive results share one user turn.
                match out.last_mut() {
                    Some(prev)
                        if prev.role == "user" && prev.content.ends_with("</tool_response>") =>
                    {
                        prev.content.push('\n');
                        prev.content.push_str(&block);
                    }
                    _ => out.push(Message::new("user", block)),
                }
            }
            _ => out.push(Message::new(m.role.clone(), m.content.clone())),
        }
    }
    (out, None)
}

/// The fallback's system text: the declarations and the call syntax.
fn fallback_system_text(tools: &[Tool]) -> String {
    let mut s = String::from(
        "You may call one or more functions to assist with the user query. The functions you \
         can call are declared here as JSON schemas:\n<tools>\n",
    );
    for t in tools {
        s.push_str(&t.declaration().to_string());
        s.push('\n');
    }
    s.push_str(
        "</tools>\nTo call a function, answer with a JSON object holding its name and \
         arguments inside <tool_call></tool_call> tags:\n<tool_call>\n{\"name\": <function-name>, \
         \"arguments\": <args-json-object>}\n</tool_call>",
    );
    s
}

/// The grammar a forced call follows: one `<tool_call>` block whose JSON is `{"name": N,
/// "arguments": A}` with `A` valid for `N`'s parameters, `N` one of `tools` (or the named
/// one). None for `auto` and `none`, or when no function matches.
pub fn call_grammar(tools: &[Tool], choice: &ToolChoice) -> Option<GrammarSpec> {
    let chosen: Vec<&Tool> = match choice {
        ToolChoice::None | ToolChoice::Auto => return None,
        ToolChoice::Required => tools.iter().collect(),
        ToolChoice::Function(n) => tools.iter().filter(|t| &t.name == n).collect(),
    };
    if chosen.is_empty() {
        return None;
    }
    Some(GrammarSpec::Lark(calls_lark(&chosen)))
}

/// A Lark grammar for one call block of any of `tools`; compiling it (see
/// [`crate::model::Model::constraint`]) also checks every parameter schema.
pub fn calls_lark(tools: &[&Tool]) -> String {
    let alts: Vec<Value> = tools
        .iter()
        .map(|t| {
            json!({
                "type": "object",
                "properties": {"name": {"const": t.name}, "arguments": t.parameters},
                "required": ["name", "arguments"],
                "additionalProperties": false,
            })
        })
        .collect();
    let schema = if alts.len() == 1 {
        alts[0].clone()
    } else {
        json!({"anyOf": alts})
    };
    let mut schema = schema;
    // Compact JSON: no free whitespace for a small model to loop in.
    schema["x-guidance"] = json!({"whitespace_flexible": false});
    format!(
        "start: {open:?} \"\\n\" call \"\\n\" {close:?}\ncall: %json {schema}\n",
        open = CALL_OPEN,
        close = CALL_CLOSE,
    )
}

/// Split an answer into its text and its calls of declared `tools`; `next_id` names each call.
/// Blocks that do not parse (or name an undeclared function) stay in the text.
pub fn split_tool_calls(
    text: &str,
    tools: &[Tool],
    mut next_id: impl FnMut() -> String,
) -> (String, Vec<ToolCall>) {
    let declared = |n: &str| tools.iter().any(|t| t.name == n);
    let mut calls = Vec::new();
    let mut rest = String::new();
    let mut s = text;
    while let Some(i) = s.find(CALL_OPEN) {
        let after = &s[i + CALL_OPEN.len()..];
        let (body, tail, closed) = match after.find(CALL_CLOSE) {
            Some(j) => (&after[..j], &after[j + CALL_CLOSE.len()..], true),
            None => (after, "", false),
        };
        match parse_call(body, &declared) {
            Some((name, arguments)) => {
                rest.push_str(&s[..i]);
                calls.push(ToolCall {
                    id: next_id(),
                    name,
                    arguments,
                });
            }
            None => {
                rest.push_str(&s[..i + CALL_OPEN.len()]);
                rest.push_str(body);
                if closed {
                    rest.push_str(CALL_CLOSE);
                }
            }
        }
        s = tail;
    }
    rest.push_str(s);
    if calls.is_empty() {
        // Llama 3.1's style: the whole answer is one call object.
        if let Some((name, arguments)) = parse_call(text, &declared) {
            calls.push(ToolCall {
                id: next_id(),
                name,
                arguments,
            });
            return (String::new(), calls);
        }
        return (text.to_string(), calls);
    }
    (rest.trim().to_string(), calls)
}

/// `{"name": N, "arguments" | "parameters": {…}}` with `N` declared → (N, arguments as JSON
/// text).
fn parse_call(body: &str, declared: &dyn Fn(&str) -> bool) -> Option<(String, String)> {
    let v: Value = serde_json::from_str(body.trim()).ok()?;
    let name = v.get("name")?.as_str()?;
    if !declared(name) {
        return None;
    }
    let args = match v.get("arguments").or_else(|| v.get("parameters")) {
        None | Some(Value::Null) => json!({}),
        // Some models write the arguments as a JSON string, as OpenAI sends them.
        Some(Value::String(s)) => serde_json::from_str(s).ok()?,
        Some(a) => a.clone(),
    };
    args.is_object()
        .then(|| (name.to_string(), args.to_string()))
}

/// How much of `text`'s end must be held back while streaming because a call block may be
/// starting there (a proper prefix of [`CALL_OPEN`]).
pub fn held_back(text: &str) -> usize {
    (1..CALL_OPEN.len())
        .rev()
        .find(|&n| text.ends_with(&CALL_OPEN[..n]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> Tool {
        Tool {
            name: "get_weather".into(),
            description: Some("Weather now".into()),
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}},
                "required": ["city"]}),
        }
    }

    fn ids() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("call_{n}")
        }
    }

    #[test]
    fn hermes_blocks_become_calls_and_the_rest_stays_text() {
        let t = [weather()];
        let (text, calls) = split_tool_calls(
            "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Lisbon\"}}\n</tool_call>",
            &t,
            ids(),
        );
        assert_eq!(text, "Let me check.");
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].name, "get_weather");
        assert_eq!(calls[0].id, "call_1");
        assert_eq!(
            serde_json::from_str::<Value>(&calls[0].arguments).unwrap(),
            json!({"city": "Lisbon"})
        );
        // Two calls, one unclosed at the end (the answer ran out at max_tokens after it).
        let (text, calls) = split_tool_calls(
            "<tool_call>{\"name\":\"get_weather\",\"arguments\":{\"city\":\"A\"}}</tool_call><tool_call>{\"name\":\"get_weather\",\"arguments\":\"{\\\"city\\\":\\\"B\\\"}\"}",
            &t,
            ids(),
        );
        assert_eq!(text, "");
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[1].arguments, r#"{"city":"B"}"#);
    }

    #[test]
    fn what_does_not_parse_stays_text() {
        let t = [weather()];
        for s in [
            "plain answer",
            "<tool_call>{\"name\": \"unknown\", \"arguments\": {}}</tool_call>",
            "<tool_call>not json</tool_call> after",
            "<tool_call>{\"name\": \"get_weather\", \"arguments\": [1]}</tool_call>",
            "{\"name\": \"other\", \"parameters\": {}}",
        ] {
            let (text, calls) = split_tool_calls(s, &t, ids());
            assert!(calls.is_empty(), "{s}");
            assert_eq!(text, s);
        }
    }

    #[test]
    fn a_bare_call_object_is_a_call() {
        let (text, calls) = split_tool_calls(
            " {\"name\": \"get_weather\", \"parameters\": {\"city\": \"Porto\"}}",
            &[weather()],
            ids(),
        );
        assert_eq!(text, "");
        assert_eq!(calls[0].arguments, r#"{"city":"Porto"}"#);
    }

    #[test]
    fn fallback_prompt_carries_declarations_calls_and_results() {
        let mut a = Message::new("assistant", "");
        a.tool_calls = vec![ToolCall {
            id: "call_1".into(),
            name: "get_weather".into(),
            arguments: r#"{"city":"Lisbon"}"#.into(),
        }];
        let mut r1 = Message::new("tool", "18 C");
        r1.tool_call_id = Some("call_1".into());
        let r2 = Message::new("tool", "sunny");
        let msgs = [
            Message::new("system", "Be brief."),
            Message::new("user", "Weather?"),
            a,
            r1,
            r2,
        ];
        let (out, decl) = prompt_messages(false, &msgs, &[weather()]);
        assert!(decl.is_none());
        let roles: Vec<&str> = out.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "user"]);
        assert!(out[0].content.starts_with("Be brief.\n\n"));
        assert!(out[0].content.contains("\"name\":\"get_weather\""));
        assert_eq!(
            out[2].content,
            "<tool_call>\n{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Lisbon\"}}\n</tool_call>"
        );
        assert_eq!(
            out[3].content,
            "<tool_response>\n18 C\n</tool_response>\n<tool_response>\nsunny\n</tool_response>"
        );
        // A template that knows tools gets the conversation as it is and the declarations.
        let (same, decl) = prompt_messages(true, &msgs, &[weather()]);
        assert_eq!(same, msgs);
        assert_eq!(decl.unwrap()[0]["function"]["name"], "get_weather");
    }

    #[test]
    fn forced_calls_have_a_grammar_and_auto_has_none() {
        let t = [weather()];
        assert!(call_grammar(&t, &ToolChoice::Auto).is_none());
        assert!(call_grammar(&t, &ToolChoice::None).is_none());
        assert!(call_grammar(&t, &ToolChoice::Function("nope".into())).is_none());
        let Some(GrammarSpec::Lark(g)) = call_grammar(&t, &ToolChoice::Required) else {
            panic!("no grammar");
        };
        assert!(g.starts_with("start: \"<tool_call>\" \"\\n\" call"), "{g}");
        assert!(g.contains(r#""const":"get_weather""#), "{g}");
    }

    #[test]
    fn names_and_holding_back() {
        assert!(valid_name("get_weather-2"));
        assert!(!valid_name(""));
        assert!(!valid_name("a b"));
        assert!(!valid_name(&"x".repeat(65)));
        assert_eq!(held_back("text <tool"), 5);
        assert_eq!(held_back("text <"), 1);
        assert_eq!(held_back("text"), 0);
        assert_eq!(held_back("<tool_call>"), 0);
    }
}
