//! The OpenAPI 3.1 description of the JSON API, generated from the method table so that it can
//! never disagree with it.

use actix_web::HttpResponse;
use serde_json::{Map, Value, json};

use crate::service::{Method, ParamKind};

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
        let error = |description: &str| {
            json!({"description": description,
                   "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
        };
        let mut responses = json!({
            "200": {"description": "the method's value",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Ok"}}}},
            "400": error("malformed_json, bad_request, bad_argument, invalid_token, unknown_provider"),
            "401": error("unauthenticated: no client certificate"),
            "403": error("forbidden: refused by a rule or a method check"),
            "404": error("unknown_method, unknown_user"),
            "413": error("body_too_large"),
            "500": error("internal, config_rejected"),
        });
        if method == Method::GetToken {
            responses["400"] = error(
                "malformed_json, bad_request, bad_argument, unknown_provider, no_idp; \
                 audience_not_allowed, scope_not_granted: refused before the IdP is contacted",
            );
            responses["404"] = error("unknown_method, unknown_user, no_token");
            responses["409"] =
                error("needs_redelegation: the user must log in again (updateToken)");
            responses["502"] = error("idp_unavailable, idp_refused");
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
                 "description": "DIRAC's TokenManager methods over HTTPS with X.509 client certificates (grid proxies accepted)."},
        "paths": paths,
        "components": {"schemas": {
            "Ok": {"type": "object", "required": ["ok", "value"],
                   "properties": {"ok": {"const": true}, "value": {}}},
            "Error": {"type": "object", "required": ["ok", "code", "message"],
                      "properties": {"ok": {"const": false}, "code": {"type": "string"}, "message": {"type": "string"}}},
        }},
    })
}
