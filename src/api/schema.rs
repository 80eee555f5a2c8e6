//! Schema fragments the derive cannot express: list-maps, patterns and CEL rules.

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

/// A condition list as a list-map keyed by `type`, so server-side apply merges conditions
/// by type instead of replacing the whole list.
pub fn conditions(generator: &mut SchemaGenerator) -> Schema {
    let item = k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition::json_schema(generator);
    json_schema!({
        "description": "Current state as kstatus conditions (`Ready`, `Reconciling`, `Stalled`), one per type.",
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": item,
    })
}

/// A list of distinct strings (`x-kubernetes-list-type: set`).
pub fn string_set(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "x-kubernetes-list-type": "set",
        "items": { "type": "string", "minLength": 1 },
    })
}

/// Platforms as a set of `os/arch[/variant]` strings.
pub fn platforms(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "x-kubernetes-list-type": "set",
        "items": { "type": "string", "pattern": crate::api::validation::PLATFORM_PATTERN },
    })
}

/// A list of objects merged by their `key` field.
pub fn list_map<T: JsonSchema>(generator: &mut SchemaGenerator, key: &str) -> Schema {
    let item = T::json_schema(generator);
    json_schema!({
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": [key],
        "items": item,
    })
}
