//! The OpenAPI document of the server's `/api/*` routes, served at `GET /api/openapi.json`.
//! `utoipa` derives it from the handlers' `#[utoipa::path]` annotations and the `ToSchema`
//! types they take and answer with, so the document changes with the code; the suite runs
//! schemathesis against it.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::server::api;

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "MemoBuild server",
        description = "Build records, analytics and webhook deliveries of a MemoBuild team server. \
                       The Bazel HTTP cache routes (`/ac/`, `/cas/`) are not part of this API.",
    ),
    paths(
        api::post_build,
        api::list_builds,
        api::get_build,
        api::get_stats,
        api::deliveries,
    ),
    modifiers(&BearerToken),
    tags(
        (name = "builds", description = "What builds report, and the figures over them"),
        (name = "webhooks", description = "Deliveries of build events"),
    )
)]
pub struct ApiDoc;

/// The `bearer` scheme the routes name: `Authorization: Bearer TOKEN` (`--token`).
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// `GET /api/openapi.json`.
pub async fn document() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(ApiDoc::openapi())
}
