//! `kiln validate`: check manifests offline with the same rules the controller applies.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Output, exit, read_input};
use crate::api::validation::{self, FieldError, ValidationErrors};
use crate::api::{BuilderPool, ImageBuild};

#[derive(clap::Args, Debug)]
pub(super) struct Args {
    /// Manifest files (multi-document YAML or JSON); `-` reads standard input.
    #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
    files: Vec<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    output: Output,
}

/// The verdict on one document.
#[derive(Serialize, Debug)]
struct Verdict {
    file: String,
    kind: String,
    name: String,
    valid: bool,
    errors: Vec<Problem>,
}

#[derive(Serialize, Debug)]
struct Problem {
    field: String,
    message: String,
}

impl From<FieldError> for Problem {
    fn from(e: FieldError) -> Self {
        Self {
            field: e.field,
            message: e.message,
        }
    }
}

#[derive(Deserialize)]
struct TypeMeta {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    metadata: NameOnly,
}

#[derive(Deserialize, Default)]
struct NameOnly {
    #[serde(default)]
    name: String,
}

pub(super) fn run(args: &Args) -> u8 {
    let mut verdicts = Vec::new();
    for file in &args.files {
        let label = file.display().to_string();
        let text = match read_input(file) {
            Ok(text) => text,
            Err(e) => {
                eprintln!("error: cannot read {label}: {e}");
                return exit::INVALID;
            }
        };
        for doc in serde_yaml::Deserializer::from_str(&text) {
            match serde_yaml::Value::deserialize(doc) {
                Ok(serde_yaml::Value::Null) => continue,
                Ok(value) => verdicts.push(check(&label, value)),
                Err(e) => verdicts.push(Verdict {
                    file: label.clone(),
                    kind: String::new(),
                    name: String::new(),
                    valid: false,
                    errors: vec![Problem {
                        field: String::new(),
                        message: format!("not valid YAML: {e}"),
                    }],
                }),
            }
        }
    }
    print(&verdicts, args.output);
    if verdicts.iter().all(|v| v.valid) {
        exit::OK
    } else {
        exit::INVALID
    }
}

fn check(file: &str, value: serde_yaml::Value) -> Verdict {
    let meta: TypeMeta = serde_yaml::from_value(value.clone()).unwrap_or(TypeMeta {
        kind: String::new(),
        metadata: NameOnly::default(),
    });
    let result: Result<(), Vec<Problem>> = match meta.kind.as_str() {
        "ImageBuild" => parse::<ImageBuild>(value).and_then(|ib| to_problems(validation::image_build(&ib.spec))),
        "BuilderPool" => parse::<BuilderPool>(value).and_then(|bp| to_problems(validation::builder_pool(&bp.spec))),
        other => Err(vec![Problem {
            field: "kind".into(),
            message: format!("{other:?} is not a kind kiln validates (ImageBuild, BuilderPool)"),
        }]),
    };
    let errors = result.err().unwrap_or_default();
    Verdict {
        file: file.to_owned(),
        kind: meta.kind,
        name: meta.metadata.name,
        valid: errors.is_empty(),
        errors,
    }
}

/// Parses a document into its type; fields the type does not know are reported, because the
/// apiserver would silently drop them.
fn parse<T: serde::de::DeserializeOwned + Serialize>(value: serde_yaml::Value) -> Result<T, Vec<Problem>> {
    let schema_error = |e: &dyn std::fmt::Display| {
        vec![Problem {
            field: String::new(),
            message: format!("does not match the schema: {e}"),
        }]
    };
    let typed: T = serde_yaml::from_value(value.clone()).map_err(|e| schema_error(&e))?;
    let given = serde_json::to_value(&value).map_err(|e| schema_error(&e))?;
    let kept = serde_json::to_value(&typed).map_err(|e| schema_error(&e))?;
    let mut unknown = Vec::new();
    unknown_fields(&given, &kept, "", &mut unknown);
    if unknown.is_empty() {
        Ok(typed)
    } else {
        Err(unknown
            .into_iter()
            .map(|field| Problem {
                field,
                message: "unknown field: the apiserver would drop it (check its spelling)".into(),
            })
            .collect())
    }
}

/// Collects paths present in `given` but missing from `kept`.
fn unknown_fields(given: &serde_json::Value, kept: &serde_json::Value, at: &str, out: &mut Vec<String>) {
    use serde_json::Value;
    match (given, kept) {
        (Value::Object(g), Value::Object(k)) => {
            for (key, value) in g {
                let path = if at.is_empty() {
                    key.clone()
                } else {
                    format!("{at}.{key}")
                };
                match k.get(key) {
                    Some(kv) => unknown_fields(value, kv, &path, out),
                    // Empty values may be omitted on the way back; only real content is lost.
                    None if !is_empty(value) && path != "status" => out.push(path),
                    None => {}
                }
            }
        }
        (Value::Array(g), Value::Array(k)) => {
            for (i, (gv, kv)) in g.iter().zip(k).enumerate() {
                unknown_fields(gv, kv, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn is_empty(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Null | serde_json::Value::Bool(false) => true,
        serde_json::Value::Object(m) => m.is_empty(),
        serde_json::Value::Array(a) => a.is_empty(),
        serde_json::Value::String(s) => s.is_empty(),
        _ => false,
    }
}

fn to_problems(r: Result<(), ValidationErrors>) -> Result<(), Vec<Problem>> {
    r.map_err(|e| e.0.into_iter().map(Problem::from).collect())
}

fn print(verdicts: &[Verdict], output: Output) {
    match output {
        Output::Json => match serde_json::to_string_pretty(verdicts) {
            Ok(json) => println!("{json}"),
            Err(e) => eprintln!("error: {e}"),
        },
        Output::Text => {
            for v in verdicts {
                let what = format!("{}/{}", v.kind.to_lowercase(), v.name);
                if v.valid {
                    println!("{}: {what} is valid", v.file);
                } else {
                    println!("{}: {what} is invalid:", v.file);
                    for e in &v.errors {
                        if e.field.is_empty() {
                            println!("  {}", e.message);
                        } else {
                            println!("  {}: {}", e.field, e.message);
                        }
                    }
                }
            }
        }
    }
}
