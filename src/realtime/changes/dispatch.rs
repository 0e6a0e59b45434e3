//! Delivery of decoded changes to the subscribers whose bindings match, after their RLS check.

use std::collections::HashMap;

use serde_json::{json, Map, Value};
use tokio_postgres::types::ToSql;

use super::bindings::{as_text, passes, select_columns, PgBinding};
use super::pgoutput::{Change, Column, Decoder, Kind, Relation};
use super::types::{commit_timestamp, record};
use crate::identity::AuthContext;
use crate::realtime::hub::Out;
use crate::state::AppState;

/// Which distinct subscribers (role and claims) may see one change: filled by one round trip
/// for all of them, never by one query per subscriber.
#[derive(Default)]
struct Verdicts(HashMap<String, bool>);

fn claims_key(ctx: &AuthContext) -> String {
    format!("{}|{}", ctx.role.as_str(), ctx.claims)
}

impl Verdicts {
    fn allows(&self, ctx: &AuthContext) -> bool {
        ctx.role.is_service() || self.0.get(&claims_key(ctx)).copied().unwrap_or(false)
    }

    /// Tables with RLS: the row must be readable by each subscriber (one call of
    /// `realtime.oxibase_rows_visible` that becomes every subscriber in turn, each check in
    /// its own subtransaction). Tables without RLS, and deletes (a deleted row cannot be read
    /// back): the table privilege of each distinct role, as Supabase.
    async fn check<'a>(
        state: &AppState,
        rel: &Relation,
        rel_oid: u32,
        row: Option<&Map<String, Value>>,
        ctxs: impl Iterator<Item = &'a AuthContext>,
    ) -> Verdicts {
        // Distinct claim sets in first-seen order (the answers come back in this order).
        let mut distinct: Vec<&AuthContext> = vec![];
        let mut v = Verdicts::default();
        for ctx in ctxs.filter(|c| !c.role.is_service()) {
            if let std::collections::hash_map::Entry::Vacant(e) = v.0.entry(claims_key(ctx)) {
                e.insert(false);
                distinct.push(ctx);
            }
        }
        if distinct.is_empty() {
            return v;
        }
        let answers = match row.filter(|_| rel.rls) {
            Some(row) => rows_visible(state, rel, rel_oid, row, &distinct).await,
            None => table_privilege(state, rel_oid, &distinct).await,
        };
        state
            .realtime
            .rls_round_trips
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let answers = answers.unwrap_or_else(|e| {
            tracing::debug!(error = %e, "realtime: visibility check failed");
            vec![]
        });
        for (i, ctx) in distinct.iter().enumerate() {
            v.0.insert(claims_key(ctx), answers.get(i).copied().unwrap_or(false));
        }
        v
    }
}

const ROWS_VISIBLE: &str = "select realtime.oxibase_rows_visible($1::int8::oid::regclass, \
     $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7, $8)";

/// One answer per subscriber, in order: can they SELECT this row (by primary key) under RLS?
/// A row without a usable key is visible to nobody.
async fn rows_visible(
    state: &AppState,
    rel: &Relation,
    rel_oid: u32,
    row: &Map<String, Value>,
    subs: &[&AuthContext],
) -> Result<Vec<bool>, String> {
    let keys: Vec<&Column> = rel
        .pk
        .iter()
        .filter_map(|k| rel.columns.iter().find(|c| &c.name == k))
        .collect();
    let mut names = vec![];
    let mut types = vec![];
    let mut vals = vec![];
    for c in &keys {
        match row.get(&c.name).filter(|v| !v.is_null()) {
            Some(v) if !c.type_sql.is_empty() => {
                names.push(c.name.clone());
                types.push(c.type_sql.clone());
                vals.push(as_text(v));
            }
            _ => return Ok(vec![false; subs.len()]),
        }
    }
    if keys.is_empty() {
        return Ok(vec![false; subs.len()]);
    }
    let roles: Vec<&str> = subs.iter().map(|c| c.role.as_str()).collect();
    let claims: Vec<String> = subs.iter().map(|c| c.claims.to_string()).collect();
    let gucs = crate::realtime::authz::gucs();
    let client = state.pool.get().await.map_err(|e| e.to_string())?;
    let stmt = client
        .prepare_cached(ROWS_VISIBLE)
        .await
        .map_err(|e| crate::db::error_text(&e))?;
    let params: [&(dyn ToSql + Sync); 8] = [
        &i64::from(rel_oid),
        &names,
        &types,
        &vals,
        &roles,
        &claims,
        &gucs.method,
        &gucs.path,
    ];
    let row = client
        .query_one(&stmt, &params)
        .await
        .map_err(|e| crate::db::error_text(&e))?;
    let out: Vec<Option<bool>> = row.try_get(0).map_err(|e| e.to_string())?;
    Ok(out.into_iter().map(|b| b.unwrap_or(false)).collect())
}

const TABLE_PRIVILEGE: &str =
    "select coalesce(has_table_privilege(r.oid, $1::int8::oid, 'SELECT'), false) \
     from unnest($2::text[]) with ordinality as u(name, n) \
     left join pg_catalog.pg_roles r on r.rolname = u.name order by u.n";

/// One answer per subscriber, in order: may their role SELECT from the table at all?
async fn table_privilege(
    state: &AppState,
    rel_oid: u32,
    subs: &[&AuthContext],
) -> Result<Vec<bool>, String> {
    let roles: Vec<&str> = subs.iter().map(|c| c.role.as_str()).collect();
    let client = state.pool.get().await.map_err(|e| e.to_string())?;
    let stmt = client
        .prepare_cached(TABLE_PRIVILEGE)
        .await
        .map_err(|e| crate::db::error_text(&e))?;
    let rows = client
        .query(&stmt, &[&i64::from(rel_oid), &roles])
        .await
        .map_err(|e| crate::db::error_text(&e))?;
    rows.iter()
        .map(|r| r.try_get::<_, bool>(0).map_err(|e| e.to_string()))
        .collect()
}

pub(super) async fn dispatch(state: &AppState, dec: &Decoder, changes: Vec<Change>) {
    let subs = state.realtime.hub.pg_subscribers();
    if subs.is_empty() {
        return;
    }
    for ch in changes {
        let Some(rel) = dec.relations.get(&ch.rel) else {
            continue;
        };
        let old = ch.old.as_ref().map(|o| record(rel, o, None, ch.old_is_key));
        let new = ch.new.as_ref().map(|n| record(rel, n, old.as_ref(), false));
        let kind = match ch.kind {
            Kind::Insert => "INSERT",
            Kind::Update => "UPDATE",
            Kind::Delete => "DELETE",
        };
        let filter_rec = match ch.kind {
            Kind::Delete => old.clone().unwrap_or_default(),
            _ => new.clone().unwrap_or_default(),
        };
        let columns: Vec<Value> = rel
            .columns
            .iter()
            .map(|c| json!({"name": c.name, "type": c.type_name}))
            .collect();
        let mut data = json!({
            "schema": rel.schema,
            "table": rel.table,
            "commit_timestamp": commit_timestamp(ch.commit_ts),
            "type": kind,
            "columns": columns,
            "errors": null,
        });
        if let Some(n) = &new {
            data["record"] = Value::Object(n.clone());
        }
        match ch.kind {
            Kind::Update => data["old_record"] = Value::Object(old.clone().unwrap_or_default()),
            Kind::Delete => {
                let mut o = old.clone().unwrap_or_default();
                // With RLS a delete cannot be checked, so only the key goes out (as Supabase).
                if rel.rls {
                    o.retain(|k, _| rel.pk.contains(k));
                }
                data["old_record"] = Value::Object(o);
            }
            Kind::Insert => {}
        }
        let matched: Vec<_> = subs
            .iter()
            .filter_map(|(chan, tx, bindings, ctx)| {
                let matching: Vec<&PgBinding> = bindings
                    .iter()
                    .filter(|b| {
                        (b.schema == "*" || b.schema == rel.schema)
                            && (b.table == "*" || b.table == rel.table)
                            && (b.action == "*" || b.action == kind)
                            && passes(&b.filters, &filter_rec)
                    })
                    .collect();
                (!matching.is_empty()).then_some((chan, tx, matching, ctx))
            })
            .collect();
        if matched.is_empty() {
            continue;
        }
        let row = new.as_ref().filter(|_| ch.kind != Kind::Delete);
        let verdicts = Verdicts::check(state, rel, ch.rel, row, matched.iter().map(|m| m.3)).await;
        for (chan, tx, matching, ctx) in matched {
            if !verdicts.allows(ctx) {
                continue;
            }
            // One message per distinct column selection (as Supabase groups them).
            let mut groups: Vec<(Option<&Vec<String>>, Vec<u32>)> = vec![];
            for b in matching {
                match groups.iter_mut().find(|(sel, _)| *sel == b.select.as_ref()) {
                    Some((_, ids)) => ids.push(b.id),
                    None => groups.push((b.select.as_ref(), vec![b.id])),
                }
            }
            for (sel, ids) in groups {
                let payload = match sel {
                    None => json!({"ids": ids, "data": data}),
                    Some(cols) => json!({"ids": ids, "data": select_columns(&data, cols, &rel.pk)}),
                };
                let _ = tx.send(Out::Push {
                    chan: *chan,
                    event: "postgres_changes",
                    payload,
                });
            }
        }
    }
}
