//! GET/HEAD on a table or view.

use http::StatusCode;

use super::error::RestError;
use super::execute::{
    content_range, content_type, execute_then, respond, single_error, Outcome, Run,
};
use super::plan::{Planner, Source};
use super::prefer::{self, Media};
use super::sql::{self, BodyShape, Sql};
use super::{range_header, RestReq, TableCall};
use crate::http::Resp;
use crate::state::AppState;

// ---------------------------------------------------------------------------------------
// Reads

pub(super) async fn read(state: &AppState, t: TableCall<'_, '_>) -> Result<Resp, RestError> {
    #[rustfmt::skip]
    let TableCall { sc, st, rel, mut params, explain, req, media } = t;
    if media == Media::GeoJson && !sc.postgis {
        return Err(RestError::not_acceptable("application/geo+json"));
    }
    // Paging: limit/offset params, Range header, max_rows.
    let top = params.mods.entry(vec![]).or_default();
    if let Some((off, lim)) = range_header(req.headers) {
        if top.offset.is_none() {
            top.offset = Some(off);
        }
        if top.limit.is_none() {
            top.limit = lim;
        }
    }
    if let Some(m) = st.max_rows {
        top.limit = Some(top.limit.map_or(m, |l| l.min(m)));
    }
    let offset = top.offset.unwrap_or(0);
    let mut planner = Planner::new(sc, st.aggregates);
    planner.mods = std::mem::take(&mut params.mods);
    let node = planner.node(
        Source::Table {
            schema: rel.schema.clone(),
            name: rel.name.clone(),
        },
        &rel.name,
        Some((rel.schema.clone(), rel.name.clone())),
        params.select.as_deref().unwrap_or(&[]),
        &[],
    )?;
    let count = req.prefer.count;
    let mut q = Sql::default();
    if matches!(
        count,
        Some(prefer::Count::Planned | prefer::Count::Estimated)
    ) {
        let mut c = Sql::default();
        c.text = sql::node_sql(&mut c, &node, None, sql::Mode::Count);
        q.count_plan = Some((c.text, c.params));
        if count == Some(prefer::Count::Estimated) {
            // PostgREST: exact while the estimate is within max-rows, else the estimate.
            q.exact_below = Some(st.max_rows.unwrap_or(1000));
        }
    }
    q.text = sql::wrap_read(
        &mut q,
        &node,
        count == Some(prefer::Count::Exact),
        &media,
        req.accept.strip_nulls,
        &BodyShape::Rows,
        None,
    );
    execute_then(state, req, &q, Run::read(explain.as_ref()), |out| {
        let total = if count.is_some() { out.total } else { None };
        finish_read(req, out, offset, total, &media, count.is_some())
    })
    .await
}

pub(super) fn finish_read(
    req: &RestReq,
    out: Outcome,
    offset: i64,
    total: Option<i64>,
    media: &Media,
    counted: bool,
) -> Result<Resp, RestError> {
    if *media == Media::Object && out.page != 1 {
        return Err(single_error(out.page));
    }
    let mut status = StatusCode::OK;
    if let Some(t) = total {
        // An offset past the end of a non-empty result (PostgREST's 416).
        if offset > 0 && offset >= t && t > 0 {
            return Err(
                RestError::new(416, "PGRST103", "Requested range not satisfiable").details(
                    format!("An offset of {offset} was requested, but there are only {t} rows."),
                ),
            );
        }
        if out.page < t {
            status = StatusCode::PARTIAL_CONTENT;
        }
    }
    let mut headers = vec![(
        "content-range".to_string(),
        content_range(offset, out.page, total),
    )];
    if counted {
        if let Some(c) = req.prefer.count {
            headers.push((
                "preference-applied".into(),
                format!("count={}", count_name(c)),
            ));
        }
    }
    Ok(respond(
        status,
        Some(content_type(&req.accept)),
        out.body,
        headers,
    ))
}

pub(super) fn count_name(c: prefer::Count) -> &'static str {
    match c {
        prefer::Count::Exact => "exact",
        prefer::Count::Planned => "planned",
        prefer::Count::Estimated => "estimated",
    }
}
