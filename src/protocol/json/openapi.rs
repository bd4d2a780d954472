//! The OpenAPI 3.1 description of the JSON API, generated from the method table and the error
//! codes so that it can never disagree with them.

use std::collections::BTreeMap;

use actix_web::HttpResponse;
use serde_json::{Map, Value, json};

use crate::service::{ErrorCode, Method, ParamKind};

pub async fn document() -> HttpResponse {
    HttpResponse::Ok().json(build())
}

fn schema(kind: ParamKind) -> Value {
    match kind {
        ParamKind::Any => json!({}),
        ParamKind::Str => json!({"type": "string"}),
        ParamKind::Int => json!({"type": "integer"}),
        ParamKind::Bool => json!({"type": "boolean"}),
        ParamKind::Dict => json!({"type": "object"}),
        ParamKind::StrList => json!({"type": "array", "items": {"type": "string"}}),
        ParamKind::OptStr => json!({"type": ["string", "null"]}),
        ParamKind::Scopes => json!({"oneOf": [
            {"type": "array", "items": {"type": "string"}}, {"type": "string"}, {"type": "null"}]}),
    }
}

pub fn build() -> Value {
    let mut paths = Map::new();
    for method in Method::ALL {
        let mut properties = Map::new();
        let mut required = Vec::new();
        for param in method.params() {
            let mut property = schema(param.kind);
            property["description"] = json!(param.description);
            properties.insert(param.name.into(), property);
            if param.default.is_none() {
                required.push(param.name);
            }
        }
        let mut responses = Map::new();
        responses.insert(
            "200".into(),
            json!({"description": "the method's value",
                   "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Ok"}}}}),
        );
        for (status, description) in refusals(method) {
            responses.insert(
                status.to_string(),
                json!({"description": description,
                       "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
            );
        }
        paths.insert(
            format!("/api/v1/{}", method.name()),
            json!({"post": {
                "operationId": method.name(),
                "summary": method.summary(),
                "requestBody": {"required": false, "content": {"application/json": {"schema": {
                    "type": "object", "properties": properties, "required": required,
                    "additionalProperties": false}}}},
                "responses": responses,
            }}),
        );
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "tokenmanager JSON API", "version": env!("CARGO_PKG_VERSION"),
                 "description": "DIRAC's TokenManager methods over HTTPS. The caller is identified by an X.509 client certificate (grid proxies accepted) or by an IdP-issued bearer token (`Authorization: Bearer …`)."},
        "paths": paths,
        "components": {"schemas": {
            "Ok": {"type": "object", "required": ["ok", "value"],
                   "properties": {"ok": {"const": true}, "value": {}}},
            "Error": {"type": "object", "required": ["ok", "code", "message"],
                      "properties": {"ok": {"const": false},
                                     "code": {"enum": ErrorCode::ALL.iter().filter(|c| c.on_json_api() == **c).map(|c| c.as_str()).collect::<Vec<_>>()},
                                     "message": {"type": "string"}}},
        }},
    })
}

/// The error replies of `method` by HTTP status: each code it may reply, with what it means.
fn refusals(method: Method) -> BTreeMap<u16, String> {
    let mut by_status: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for code in ErrorCode::ALL {
        if code.on_json_api() == code && code.applies_to(method) {
            by_status
                .entry(code.http_status().as_u16())
                .or_default()
                .push(format!("{code}: {}", code.description()));
        }
    }
    by_status
        .into_iter()
        .map(|(status, codes)| (status, codes.join("; ")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code the JSON API replies is listed under its status, for each method that may
    /// reply it; a code replaced on the JSON API is listed as its replacement.
    #[test]
    fn every_code_is_listed_under_its_status() {
        let document = build();
        for method in Method::ALL {
            let responses =
                &document["paths"][format!("/api/v1/{}", method.name())]["post"]["responses"];
            for code in ErrorCode::ALL
                .into_iter()
                .filter(|code| code.applies_to(method))
            {
                let status = code.http_status().as_u16().to_string();
                let listed = responses[&status]["description"]
                    .as_str()
                    .unwrap_or_default();
                let name = format!("{}: ", code.on_json_api());
                assert!(
                    listed.starts_with(&name) || listed.contains(&format!("; {name}")),
                    "{} {status} does not list {code}: {listed}",
                    method.name()
                );
            }
        }
        let get_token = &document["paths"]["/api/v1/getToken"]["post"]["responses"];
        assert!(
            get_token["401"]["description"]
                .as_str()
                .is_some_and(|d| d.contains("bearer token")),
            "401 covers bearer tokens"
        );
        let ping = &document["paths"]["/api/v1/ping"]["post"]["responses"];
        assert!(ping.get("409").is_none(), "ping never needs a redelegation");
    }
}
