//! The OpenAPI document of `/api/v1`, generated from the handlers' `#[utoipa::path]` attributes and the types of
//! `views` as the router is built (so a route cannot be served without being described), and served at
//! `GET /api/v1/openapi.json` to anyone: it describes the API, it holds nothing of the store.

use std::sync::OnceLock;

use axum::response::IntoResponse;
use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::OpenApi as Document;
use utoipa::{Modify, OpenApi};

/// The parts of the document no handler says: its title, and that every operation takes a bearer token.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "segment-exporter",
        description = "Keeps Iterable static lists equal to customer segments. Every operation needs \
                       `Authorization: Bearer TOKEN`; errors are `{\"error\": {\"kind\", \"message\"}}`."
    ),
    modifiers(&BearerToken),
    security(("token" = []))
)]
pub struct ApiDoc;

struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(
                HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("se_ID_SECRET").build(),
            ),
        );
    }
}

/// The whole document, as served.
pub fn document() -> &'static serde_json::Value {
    static DOC: OnceLock<serde_json::Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let (_, doc) = utoipa_axum::router::OpenApiRouter::with_openapi(ApiDoc::openapi())
            .nest("/api/v1", super::routes())
            .split_for_parts();
        serde_json::to_value(doc).expect("an OpenAPI document serializes")
    })
}

/// This document (no token needed).
#[utoipa::path(get, path = "/openapi.json", tag = "meta", security(()),
    responses((status = 200, description = "The OpenAPI document of /api/v1", body = Object)))]
pub async fn serve() -> impl IntoResponse {
    Json(document())
}
