//! The OpenAPI 3.1 document of the admin API, made from [`super::ROUTES`] (the table the
//! router is made from), served at `GET /admin/v1/openapi.json`.

use axum::Json;
use serde_json::{Map, Value, json};

use super::{Access, BodyKind, ROUTES, RouteSpec};

/// `GET /admin/v1/openapi.json`.
pub async fn serve() -> Json<Value> {
    Json(document())
}

/// The whole document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for route in ROUTES {
        let item = paths
            .entry(route.path.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(item) = item {
            item.insert(route.method.to_owned(), operation(route));
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "arp-host admin API",
            "version": "1",
            "description": "Tenant administration. Authenticate with `Authorization: Bearer` \
                and the operator token or a tenant API key. Another tenant's objects \
                answer 404. Errors are {ok:false, error:<reason code>, detail}.",
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                    "description": "The operator token or a tenant API key (arpk_...)"},
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["ok", "error"],
                    "properties": {
                        "ok": {"const": false},
                        "error": {"type": "string", "description": "stable reason code"},
                        "detail": {"type": "string"},
                    },
                },
                "Ok": {
                    "type": "object",
                    "required": ["ok"],
                    "properties": {"ok": {"const": true}},
                    "additionalProperties": true,
                },
            },
        },
        "paths": paths,
    })
}

fn operation(route: &RouteSpec) -> Value {
    let parameters: Vec<Value> = route
        .path
        .split('/')
        .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    let error = json!({"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let mut responses = Map::new();
    let success = if route.method == "post" && route.body != BodyKind::None
        || route.operation_id == "uploadPolicy"
    {
        "201"
    } else {
        "200"
    };
    responses.insert(
        success.into(),
        json!({"description": "done", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Ok"}}}}),
    );
    responses.insert("400".into(), with_description(&error, "bad input"));
    if route.access != Access::Public {
        responses.insert("401".into(), with_description(&error, "no valid token"));
    }
    if matches!(route.access, Access::Operator | Access::TenantOperator) {
        responses.insert("403".into(), with_description(&error, "operator_only"));
    }
    responses.insert(
        "404".into(),
        with_description(&error, "not found (or another tenant's)"),
    );
    if route.body == BodyKind::Component {
        responses.insert(
            "413".into(),
            with_description(&error, "component_too_large"),
        );
        responses.insert(
            "422".into(),
            with_description(&error, "refused by admission or its test cases"),
        );
    }
    let mut operation = json!({
        "operationId": route.operation_id,
        "summary": route.summary,
        "parameters": parameters,
        "responses": responses,
        "x-access": format!("{:?}", route.access),
    });
    if route.access != Access::Public {
        operation["security"] = json!([{"bearer": []}]);
    }
    match route.body {
        BodyKind::None => {}
        BodyKind::Json => {
            operation["requestBody"] =
                json!({"content": {"application/json": {"schema": {"type": "object"}}}});
        }
        BodyKind::Component => {
            operation["requestBody"] = json!({
                "required": true,
                "content": {
                    "application/wasm": {"schema": {"type": "string", "format": "binary"}},
                    "application/json": {"schema": {
                        "type": "object",
                        "required": ["component"],
                        "properties": {
                            "component": {"type": "string", "contentEncoding": "base64"},
                            "cases": {"description": "a case file (policy test formats) as JSON"},
                        },
                    }},
                },
            });
        }
    }
    operation
}

fn with_description(response: &Value, description: &str) -> Value {
    let mut response = response.clone();
    response["description"] = Value::String(description.to_owned());
    response
}
