//! The route table: every route once, with the access it needs; the
//! router and the OpenAPI test are both built from it.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, MethodRouter};
use axum::Router;

use super::error::{self, ApiError};
use super::{console, galleries, items, openapi, search, App};
use crate::security::auth::ApiKeys;
use crate::telemetry::metrics;
use crate::telemetry::request_id::RequestIdLayer;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The console's files and the OpenAPI document: no data, no key.
    Open,
    Read,
    Write,
}

pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
    handler: MethodRouter<App>,
}

fn route(method: Method, path: &'static str, access: Access, h: MethodRouter<App>) -> Route {
    Route {
        method,
        path,
        access,
        handler: h,
    }
}

pub fn routes() -> Vec<Route> {
    use Access::{Open, Read, Write};
    use Method as M;
    vec![
        route(M::GET, "/", Open, get(console::page)),
        route(M::GET, "/console.js", Open, get(console::script)),
        route(M::GET, "/console.css", Open, get(console::style)),
        route(M::GET, "/v1/openapi.json", Open, get(openapi::document)),
        route(
            M::GET,
            "/v1/galleries",
            Read,
            get(galleries::list_galleries),
        ),
        route(
            M::POST,
            "/v1/galleries",
            Write,
            post(galleries::create_gallery),
        ),
        route(
            M::GET,
            "/v1/galleries/{gallery}",
            Read,
            get(galleries::gallery_stats),
        ),
        route(
            M::DELETE,
            "/v1/galleries/{gallery}",
            Write,
            delete(galleries::drop_gallery),
        ),
        route(
            M::POST,
            "/v1/galleries/{gallery}/search",
            Read,
            post(search::search),
        ),
        route(
            M::POST,
            "/v1/galleries/{gallery}/items",
            Write,
            post(items::add_items),
        ),
        route(
            M::GET,
            "/v1/galleries/{gallery}/items",
            Read,
            get(items::list_items),
        ),
        route(
            M::GET,
            "/v1/galleries/{gallery}/items/{id}",
            Read,
            get(items::get_item),
        ),
        route(
            M::DELETE,
            "/v1/galleries/{gallery}/items/{id}",
            Write,
            delete(items::remove_item),
        ),
        route(
            M::GET,
            "/v1/galleries/{gallery}/items/{id}/thumbnail",
            Read,
            get(items::thumbnail),
        ),
        route(M::POST, "/v1/embed", Read, post(search::embed)),
    ]
}

/// The HTTP application: the routes behind the API-key check, each
/// counted under its route template, the body limit, JSON 404s, and a
/// request id on every response (as gRPC's).
pub fn router(app: App) -> Router {
    let mut by_path: BTreeMap<&'static str, MethodRouter<App>> = BTreeMap::new();
    for r in routes() {
        let h = match r.access {
            Access::Open => r.handler,
            a => r.handler.route_layer(middleware::from_fn_with_state(
                (app.keys.clone(), a == Access::Write),
                authorise,
            )),
        };
        // Outside the key check, so refused calls are counted too.
        let h = h.route_layer(middleware::from_fn_with_state(
            RouteLabel {
                route: r.path,
                method: r.method.clone(),
            },
            record,
        ));
        let merged = match by_path.remove(r.path) {
            Some(m) => m.merge(h),
            None => h,
        };
        by_path.insert(r.path, merged);
    }
    let mut router = Router::new();
    for (path, h) in by_path {
        router = router.route(path, h);
    }
    router
        .fallback(unmatched)
        .layer(DefaultBodyLimit::max(app.max_body))
        .layer(RequestIdLayer)
        .with_state(app)
}

/// A route's metric labels: its template, never the request's own path,
/// so clients cannot grow the label set.
#[derive(Clone)]
struct RouteLabel {
    route: &'static str,
    method: Method,
}

/// Route label of requests whose path matched no route (a wrong method on
/// a known path is answered 405 by axum and not counted).
pub const UNMATCHED: &str = "unmatched";

async fn record(State(label): State<RouteLabel>, req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    observe(label.route, label.method.as_str(), &resp, started);
    resp
}

async fn unmatched(req: Request) -> Response {
    let started = std::time::Instant::now();
    let resp = error::not_found(req.uri().clone()).await.into_response();
    observe(UNMATCHED, "other", &resp, started);
    resp
}

fn observe(route: &str, method: &str, resp: &Response, started: std::time::Instant) {
    let m = metrics();
    m.http_requests
        .with_label_values(&[route, method, resp.status().as_str()])
        .inc();
    m.http_request_seconds
        .with_label_values(&[route, method])
        .observe(started.elapsed().as_secs_f64());
}

/// The API-key check both transports make (`ApiKeys::check_headers`).
async fn authorise(
    State((keys, write)): State<(Option<Arc<ApiKeys>>, bool)>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(keys) = &keys {
        if let Err(e) = keys.check_headers(req.headers(), write) {
            return ApiError::from(e).into_response();
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use utoipa::OpenApi;

    use super::*;

    #[test]
    fn every_api_route_is_documented_and_every_documented_route_exists() {
        let routed: BTreeSet<(String, String)> = routes()
            .iter()
            .filter(|r| r.path.starts_with("/v1/"))
            .map(|r| (r.method.to_string(), r.path.to_string()))
            .collect();
        let doc = openapi::ApiDoc::openapi();
        let mut documented = BTreeSet::new();
        for (path, item) in &doc.paths.paths {
            let ops = [
                ("GET", item.get.is_some()),
                ("POST", item.post.is_some()),
                ("PUT", item.put.is_some()),
                ("PATCH", item.patch.is_some()),
                ("DELETE", item.delete.is_some()),
                ("HEAD", item.head.is_some()),
            ];
            for (m, present) in ops {
                if present {
                    documented.insert((m.to_string(), path.clone()));
                }
            }
        }
        assert_eq!(routed, documented);
    }
}
