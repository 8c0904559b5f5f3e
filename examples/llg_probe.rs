//! Prototype: llguidance constrained decoding over Fado's own tokenizer (no `toktrie_hf_tokenizers`).
//!
//! Loads the tokenizer from a GGUF file, builds llguidance's token environment from
//! `Tokenizer::token_bytes`, compiles JSON schemas / a Lark grammar, and runs fake decoders that
//! pick from the allowed-token mask until the grammar stops, timing `compute_mask` per step.
//!
//! ```text
//! cargo run --example llg_probe -- [path/to/model.gguf]
//! ```

use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fado::tokenizer::Tokenizer;
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Value};

type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

const DEFAULT_GGUF: &str = "/root/.cache/fado/SmolLM2-135M-Instruct.Q4_1.gguf";

// ---------------------------------------------------------------------------------------------
// Token environment

/// llguidance's view of Fado's tokenizer: the byte trie plus Fado's own encoder (used by
/// llguidance only to tokenize forced text / grammar literals, not in the mask loop).
struct FadoTokEnv {
    tok: Tokenizer,
    trie: TokTrie,
}

impl TokenizerEnv for FadoTokEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        // Valid UTF-8 goes through the real BPE; stray bytes are tokenized greedily on the trie.
        self.trie
            .tokenize_with_greedy_fallback(s, |s| self.tok.encode(s, false).unwrap_or_default())
    }
    // tokenize_is_canonical() defaults to true: Fado's encode is Hugging Face's encode.
}

/// Per-token bytes as llguidance wants them: raw bytes for text tokens, `0xFF` + spelling for
/// special (control) tokens so that grammar text can never produce them, and placeholder
/// special tokens for ids past the tokenizer's vocabulary (padded model vocabularies).
fn token_words(tok: &Tokenizer, n_vocab: usize) -> Vec<Vec<u8>> {
    let n = tok.vocab_size();
    let mut words = Vec::with_capacity(n_vocab.max(n));
    for id in 0..n as u32 {
        let bytes = tok.token_bytes(id);
        if tok.is_special(id) {
            let mut b = vec![TokTrie::SPECIAL_TOKEN_MARKER];
            b.extend_from_slice(tok.id_to_token(id).unwrap_or_default().as_bytes());
            words.push(b);
        } else {
            words.push(bytes);
        }
    }
    while words.len() < n_vocab {
        let mut b = vec![TokTrie::SPECIAL_TOKEN_MARKER];
        b.extend_from_slice(format!("<[{}]>", words.len()).as_bytes());
        words.push(b);
    }
    words
}

/// `n_vocab`: rows of the model's logits (may exceed the tokenizer's vocabulary).
fn fado_tok_env(tok: Tokenizer, n_vocab: usize, stop_ids: &[u32]) -> Res<TokEnv> {
    let words = token_words(&tok, n_vocab);
    let eos = *stop_ids.first().ok_or("no EOS id")?;
    let mut info = TokRxInfo::new(words.len() as u32, eos);
    info.tok_bos = tok.bos_id();
    let trie = TokTrie::from(&info, &words).with_eos_tokens(stop_ids);
    Ok(Arc::new(FadoTokEnv { tok, trie }))
}

// ---------------------------------------------------------------------------------------------
// Fake decoders

#[derive(Clone, Copy, Debug)]
enum Pick<'a> {
    /// Lowest allowed id.
    Lowest,
    /// Longest allowed token that is a prefix of the rest of this text; EOS once it is used up.
    Target(&'a str),
    /// Uniform over the allowed ids, from a seeded LCG.
    Random(u64),
}

struct Run {
    text: String,
    tokens: Vec<TokenId>,
    finished: bool,
    stop: String,
    mask_times: Vec<Duration>,
    commit_times: Vec<Duration>,
    allowed_counts: Vec<usize>,
}

fn run(
    factory: &ParserFactory,
    grammar: TopLevelGrammar,
    pick: Pick<'_>,
    max_steps: usize,
) -> Res<(Run, Duration)> {
    let env = factory.tok_env().clone();
    let trie = env.tok_trie();
    let t0 = Instant::now();
    let parser = factory.create_parser(grammar)?; // Err = invalid grammar/schema
    let mut m = Matcher::new(Ok(parser));
    let compile = t0.elapsed();

    let mut r = Run {
        text: String::new(),
        tokens: vec![],
        finished: false,
        stop: String::new(),
        mask_times: vec![],
        commit_times: vec![],
        allowed_counts: vec![],
    };
    let mut produced: Vec<u8> = Vec::new();
    // Special tokens (0xFF-marked) other than the stop ids must never be allowed.
    let specials: Vec<TokenId> = (0..trie.vocab_size() as u32)
        .filter(|&t| trie.is_special_token(t) && !trie.eos_tokens().contains(&t))
        .collect();
    let mut rng = match pick {
        Pick::Random(s) => s.wrapping_mul(2).wrapping_add(1),
        _ => 1,
    };
    for _ in 0..max_steps {
        if m.is_stopped() {
            break;
        }
        let t = Instant::now();
        let mask: SimpleVob = m.compute_mask()?;
        r.mask_times.push(t.elapsed());
        r.allowed_counts.push(mask.num_set());
        if let Some(t) = specials.iter().find(|&&t| mask.is_allowed(t)) {
            return Err(format!("special token {t} allowed by the mask").into());
        }
        let tok = match pick {
            Pick::Lowest => mask.first_bit_set().ok_or("empty mask")? as TokenId,
            Pick::Target(target) => {
                let rest = &target.as_bytes()[produced.len().min(target.len())..];
                let mut best: Option<(usize, TokenId)> = None;
                mask.iter_set_entries(|i| {
                    let b = trie.token(i as u32);
                    if !b.is_empty()
                        && b[0] != TokTrie::SPECIAL_TOKEN_MARKER
                        && rest.starts_with(b)
                        && best.is_none_or(|(l, _)| b.len() > l)
                    {
                        best = Some((b.len(), i as u32));
                    }
                });
                match best {
                    Some((_, t)) => t,
                    None => {
                        // Target used up (or diverged): EOS if allowed, else the lowest id.
                        let eos = trie.eos_token();
                        if mask.is_allowed(eos) {
                            eos
                        } else {
                            mask.first_bit_set().ok_or("empty mask")? as TokenId
                        }
                    }
                }
            }
            Pick::Random(_) => {
                let list = mask.to_list();
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                *list
                    .get((rng >> 33) as usize % list.len().max(1))
                    .ok_or("empty mask")?
            }
        };
        let t = Instant::now();
        m.consume_token(tok)?;
        r.commit_times.push(t.elapsed());
        r.tokens.push(tok);
        if trie.eos_tokens().contains(&tok) {
            break;
        }
        produced.extend_from_slice(trie.token(tok));
    }
    r.finished = m.is_stopped();
    r.stop = format!("{:?}", m.stop_reason());
    r.text = String::from_utf8_lossy(&produced).into_owned();
    Ok((r, compile))
}

// ---------------------------------------------------------------------------------------------
// Checks and reports

fn validate(schema: &Value, inst: &Value) -> Result<(), String> {
    let mut schemas = boon::Schemas::new();
    let mut c = boon::Compiler::new();
    c.add_resource("mem:///schema.json", schema.clone())
        .map_err(|e| e.to_string())?;
    let idx = c
        .compile("mem:///schema.json", &mut schemas)
        .map_err(|e| e.to_string())?;
    schemas.validate(inst, idx).map_err(|e| format!("{e:#}"))
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn stats(label: &str, ts: &[Duration]) -> String {
    if ts.is_empty() {
        return format!("{label}: -");
    }
    let mut v: Vec<f64> = ts.iter().map(|&d| us(d)).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let p = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    format!(
        "{label}: n={} mean={:.0}us p50={:.0}us p90={:.0}us max={:.0}us (first {:.0}us)",
        v.len(),
        mean,
        p(0.5),
        p(0.9),
        v[v.len() - 1],
        us(ts[0])
    )
}

fn report(
    name: &str,
    tok: &Tokenizer,
    r: &Run,
    compile: Duration,
    schema: Option<&Value>,
    all_mask: &mut Vec<Duration>,
) -> bool {
    let decoded = tok.decode_with(
        &r.tokens
            .iter()
            .copied()
            .filter(|t| !tok.eos_ids().contains(t) && !tok.is_special(*t))
            .collect::<Vec<_>>(),
        true,
    );
    let shown: String = r.text.chars().take(300).collect();
    println!("== {name}");
    println!(
        "   tokens={} finished={} stop={} compile={:.1}ms",
        r.tokens.len(),
        r.finished,
        r.stop,
        compile.as_secs_f64() * 1e3
    );
    println!(
        "   text={shown:?}{}",
        if r.text.chars().count() > 300 {
            "…"
        } else {
            ""
        }
    );
    println!("   {}", stats("compute_mask", &r.mask_times));
    println!("   {}", stats("consume_token", &r.commit_times));
    let (mn, mx) = (
        r.allowed_counts.iter().min().copied().unwrap_or(0),
        r.allowed_counts.iter().max().copied().unwrap_or(0),
    );
    println!("   allowed tokens per step: min={mn} max={mx}");
    all_mask.extend_from_slice(&r.mask_times);
    let mut ok = r.finished;
    if decoded != r.text {
        println!("   MISMATCH: fado decode gives {decoded:?}");
        ok = false;
    }
    if let Some(schema) = schema {
        match serde_json::from_str::<Value>(&r.text) {
            Ok(v) => match validate(schema, &v) {
                Ok(()) => println!("   serde_json: ok; boon schema validation: ok"),
                Err(e) => {
                    println!("   serde_json: ok; boon schema validation FAILED: {e}");
                    ok = false;
                }
            },
            Err(e) => {
                println!("   serde_json FAILED: {e}");
                ok = false;
            }
        }
    }
    ok
}

/// The factory is shared across requests and a matcher moves with its request between threads.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<ParserFactory>();
    send_sync::<Matcher>();
    send_sync::<FadoTokEnv>();
};

fn main() -> Res<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| DEFAULT_GGUF.to_string());

    // 1. Fado's tokenizer from the GGUF metadata (no weights read).
    let t = Instant::now();
    let gguf = fado::loader::GgufFile::open(&path)?;
    let tok = fado::loader::gguf::vocab::tokenizer_from_map(gguf.metadata())?;
    println!(
        "tokenizer: {tok:?} loaded in {:.0}ms",
        t.elapsed().as_secs_f64() * 1e3
    );

    // Stop ids: the tokenizer's EOS plus the chat end-of-turn marker.
    let mut stop_ids: Vec<u32> = tok.eos_ids().to_vec();
    if let Some(id) = tok.token_to_id("<|im_end|>") {
        if !stop_ids.contains(&id) {
            stop_ids.push(id);
        }
    }
    println!(
        "stop ids: {:?} ({:?})",
        stop_ids,
        stop_ids
            .iter()
            .map(|&i| tok.id_to_token(i))
            .collect::<Vec<_>>()
    );

    // Sanity: token_bytes agrees with decode on every non-special token that is valid UTF-8,
    // and the byte-level alphabet is undone (no 'Ġ' / 'Ċ' left in the bytes).
    let n = tok.vocab_size();
    let (mut checked, mut bad, mut specials, mut non_utf8, mut angle) = (0, 0, 0, 0, 0);
    for id in 0..n as u32 {
        if tok.is_special(id) {
            specials += 1;
            continue;
        }
        let b = tok.token_bytes(id);
        match std::str::from_utf8(&b) {
            Ok(s) => {
                checked += 1;
                if tok.decode(&[id]) != s {
                    bad += 1;
                    if bad <= 5 {
                        println!(
                            "  byte mismatch id={id} bytes={s:?} decode={:?}",
                            tok.decode(&[id])
                        );
                    }
                }
                if s.starts_with('<') && s.ends_with('>') && s.len() > 2 {
                    angle += 1;
                }
            }
            Err(_) => non_utf8 += 1,
        }
    }
    println!(
        "vocab={n}: special={specials} utf8-checked={checked} mismatches={bad} partial-utf8={non_utf8} \
         non-special <...> tokens={angle}"
    );
    println!(
        "  e.g. id of ' {{' = {:?} bytes={:?}",
        tok.encode(" {", false)?,
        tok.encode(" {", false)?
            .iter()
            .map(|&i| tok.token_bytes(i))
            .collect::<Vec<_>>()
    );

    // 2. Token environment + parser factory (once per model).
    let t = Instant::now();
    let env = fado_tok_env(tok, n, &stop_ids)?;
    let t_env = t.elapsed();
    let t = Instant::now();
    let mut factory = ParserFactory::new_simple(&env)?;
    factory.quiet(); // no warnings on stderr
    println!(
        "TokEnv built in {:.0}ms, ParserFactory::new_simple in {:.0}ms",
        t_env.as_secs_f64() * 1e3,
        t.elapsed().as_secs_f64() * 1e3
    );
    // The Tokenizer moved into the env; rebuild one for decoding checks.
    let tok = fado::loader::gguf::vocab::tokenizer_from_map(gguf.metadata())?;

    let person = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer", "minimum": 0, "maximum": 150}
        },
        "required": ["name", "age"]
    });
    let person_short = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 5},
            "age": {"type": "integer", "minimum": 0, "maximum": 150}
        },
        "required": ["name", "age"]
    });
    // Strict variants: no extra properties (JSON Schema allows them by default, and llguidance
    // follows that), and no free whitespace (`x-guidance` is llguidance's per-schema options).
    let mut strict = person.clone();
    strict["additionalProperties"] = json!(false);
    strict["x-guidance"] = json!({"whitespace_flexible": false});
    let mut strict_short = person_short.clone();
    strict_short["additionalProperties"] = json!(false);
    let nested = json!({
        "$defs": {
            "item": {
                "type": "object",
                "properties": {
                    "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
                    "qty": {"type": "integer", "minimum": 1},
                    "tags": {"type": "array", "items": {"enum": ["new", "sale", "gift"]}, "maxItems": 3}
                },
                "required": ["sku", "qty"],
                "additionalProperties": false
            }
        },
        "type": "object",
        "properties": {
            "order_id": {"type": "integer"},
            "email": {"type": "string", "format": "email"},
            "items": {"type": "array", "items": {"$ref": "#/$defs/item"}, "minItems": 1},
            "note": {"anyOf": [{"type": "string"}, {"type": "null"}]}
        },
        "required": ["order_id", "items"],
        "additionalProperties": false
    });
    let any_object = json!({"type": "object"});
    let lark = r#"
start: "Answer: " ANSWER ", confidence " PCT "%"
ANSWER: "yes" | "no"
PCT: /[0-9]{1,2}/
"#;

    let mut all_ok = true;
    let mut all_mask = Vec::new();
    // (name, grammar, decoder, schema to validate against, expected to finish)
    let cases: Vec<(&str, TopLevelGrammar, Pick, Option<&Value>, bool)> = vec![
        (
            "json schema, target text",
            TopLevelGrammar::from_json_schema(person.clone()),
            Pick::Target(r#"{"name": "Ada Lovelace", "age": 36}"#),
            Some(&person),
            true,
        ),
        (
            "json schema (maxLength 5), lowest id: never ends (extra properties allowed)",
            TopLevelGrammar::from_json_schema(person_short.clone()),
            Pick::Lowest,
            Some(&person_short),
            false,
        ),
        (
            "json schema (maxLength 5, additionalProperties false), lowest id",
            TopLevelGrammar::from_json_schema(strict_short.clone()),
            Pick::Lowest,
            Some(&strict_short),
            true,
        ),
        (
            "json schema, random seed 0: whitespace_flexible default, loops on whitespace",
            TopLevelGrammar::from_json_schema(person.clone()),
            Pick::Random(0),
            Some(&person),
            false,
        ),
        (
            "strict json schema, random seed 1",
            TopLevelGrammar::from_json_schema(strict.clone()),
            Pick::Random(1),
            Some(&strict),
            true,
        ),
        (
            "strict json schema, random seed 2",
            TopLevelGrammar::from_json_schema(strict.clone()),
            Pick::Random(2),
            Some(&strict),
            true,
        ),
        (
            "strict json schema, random seed 3",
            TopLevelGrammar::from_json_schema(strict.clone()),
            Pick::Random(3),
            Some(&strict),
            true,
        ),
        (
            "nested schema ($ref, pattern, enum, anyOf, format), target text",
            TopLevelGrammar::from_json_schema(nested.clone()),
            Pick::Target(
                r#"{"order_id": 17, "email": "ada@example.com", "items": [{"sku": "ABC-1234", "qty": 2, "tags": ["new", "gift"]}, {"sku": "XYZ-0001", "qty": 1}], "note": null}"#,
            ),
            Some(&nested),
            true,
        ),
        (
            "json_object (any object), target text",
            TopLevelGrammar::from_tagged_str("json_object", "")?,
            Pick::Target(r#"{"a": [1, -2.5e3, {"b": null}], "c": "café ünïcødé 🎉\n", "d": true}"#),
            Some(&any_object),
            true,
        ),
        (
            "json_object, target with a \\u00e9 escape (refused by default: only control chars)",
            TopLevelGrammar::from_tagged_str("json_object", "")?,
            Pick::Target(r#"{"c": "caf\u00e9"}"#),
            Some(&any_object),
            true,
        ),
        (
            "lark, target text",
            TopLevelGrammar::from_lark(lark.to_string()),
            Pick::Target("Answer: yes, confidence 87%"),
            None,
            true,
        ),
        (
            "lark, lowest id",
            TopLevelGrammar::from_lark(lark.to_string()),
            Pick::Lowest,
            None,
            true,
        ),
        (
            "lark open-ended (start: /[0-9]+/), target then EOS",
            TopLevelGrammar::from_lark("start: /[0-9]+/".to_string()),
            Pick::Target("42"),
            None,
            true,
        ),
    ];
    for (name, g, pick, schema, expect_finish) in cases {
        let max = if expect_finish { 5000 } else { 1500 };
        let (r, compile) = run(&factory, g, pick, max)?;
        let ok = report(name, &tok, &r, compile, schema, &mut all_mask);
        if ok != expect_finish {
            println!("   ^^^ UNEXPECTED (expected ok={expect_finish})");
            all_ok = false;
        }
    }
    println!("ALL STEPS {}", stats("compute_mask", &all_mask));

    // A target that violates the schema: the mask must refuse it (age > 150).
    let (r, _) = run(
        &factory,
        TopLevelGrammar::from_json_schema(strict.clone()),
        Pick::Target(r#"{"name":"X","age":151}"#),
        200,
    )?;
    println!(
        "== schema-violating target -> {:?} (finished={})",
        r.text, r.finished
    );

    // Forced output ("fast-forward"): what the grammar forces right now, as bytes and as tokens
    // (tokens come from FadoTokEnv::tokenize_bytes, i.e. Fado's own BPE).
    let mut m =
        Matcher::new(factory.create_parser(TopLevelGrammar::from_json_schema(strict.clone())));
    let ff_bytes = m.compute_ff_bytes();
    let ff = m.compute_ff_tokens();
    println!(
        "== forced at start of strict schema: bytes={:?} tokens={:?} = {:?}",
        String::from_utf8_lossy(&ff_bytes),
        ff,
        ff.iter().map(|&t| tok.decode(&[t])).collect::<Vec<_>>()
    );
    m.consume_tokens(&ff)?;
    let mask = m.compute_mask()?;
    println!(
        "   after consuming them: {} tokens allowed, accepting={}, stopped={}",
        mask.num_set(),
        m.is_accepting()?,
        m.is_stopped()
    );
    // Rollback (for speculative decoding / undo): back to the start, same forced bytes again.
    m.rollback(ff.len())?;
    println!(
        "   after rollback({}): ff again = {:?}",
        ff.len(),
        String::from_utf8_lossy(&m.compute_ff_bytes())
    );

    // 3. Invalid grammars: the error text from create_parser.
    println!("== invalid grammars");
    let bad: Vec<(&str, TopLevelGrammar)> = vec![
        (
            "unknown type",
            TopLevelGrammar::from_json_schema(json!({"type": "strng"})),
        ),
        (
            "min > max",
            TopLevelGrammar::from_json_schema(
                json!({"type": "integer", "minimum": 5, "maximum": 1}),
            ),
        ),
        (
            "dangling $ref",
            TopLevelGrammar::from_json_schema(json!({"$ref": "#/$defs/nope"})),
        ),
        (
            "bad pattern",
            TopLevelGrammar::from_json_schema(json!({"type": "string", "pattern": "(unclosed"})),
        ),
        (
            "schema not an object",
            TopLevelGrammar::from_json_schema(json!(42)),
        ),
        (
            "lark undefined rule",
            TopLevelGrammar::from_lark("start: foo".to_string()),
        ),
        (
            "lark unterminated string",
            TopLevelGrammar::from_lark("start: \"a".to_string()),
        ),
        (
            "lark unbalanced paren",
            TopLevelGrammar::from_lark("start: (\"a\"".to_string()),
        ),
        (
            "lark bad regex",
            TopLevelGrammar::from_lark("start: /[a-/".to_string()),
        ),
        (
            "json + lark via %json",
            TopLevelGrammar::from_lark("start: \"R: \" %json {\"type\": \"integer\"}".to_string()),
        ),
    ];
    for (name, g) in bad {
        match factory.create_parser(g) {
            Ok(_) => println!("   {name}: accepted (no error)"),
            Err(e) => {
                let msg = e.to_string();
                let first: String = msg
                    .lines()
                    .collect::<Vec<_>>()
                    .join(" | ")
                    .chars()
                    .take(240)
                    .collect();
                println!("   {name}: Err: {first}");
            }
        }
    }
    // Matcher::new keeps an Err as an error state instead.
    let m = Matcher::new(
        factory.create_parser(TopLevelGrammar::from_json_schema(json!({"type": "strng"}))),
    );
    println!(
        "   Matcher::new(Err): is_error={} get_error={:?}",
        m.is_error(),
        m.get_error()
            .map(|s| s.chars().take(80).collect::<String>())
    );

    println!("{}", if all_ok { "PROBE OK" } else { "PROBE FAILED" });
    if !all_ok {
        std::process::exit(1);
    }
    Ok(())
}
