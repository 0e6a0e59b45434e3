//! Delivery of decoded changes to the subscribers whose bindings match, after their RLS check.

use std::collections::HashMap;

use serde_json::{json, Map, Value};
use tokio_postgres::types::ToSql;

use super::bindings::{as_text, passes, select_columns, PgBinding};
use super::pgoutput::{Change, Column, Decoder, Kind, Relation};
use super::types::{commit_timestamp, record};
use crate::db::{begin_as, quote_ident};
use crate::identity::AuthContext;
use crate::realtime::hub::Out;
use crate::state::AppState;

/// Can this subscriber SELECT the row (by primary key) under RLS?
async fn visible(
    state: &AppState,
    ctx: &AuthContext,
    rel: &Relation,
    rec: &Map<String, Value>,
) -> bool {
    let keys: Vec<&Column> = rel
        .pk
        .iter()
        .filter_map(|k| rel.columns.iter().find(|c| &c.name == k))
        .collect();
    if keys.is_empty() || keys.iter().any(|c| c.type_sql.is_empty()) {
        return false;
    }
    let mut conds = vec![];
    let mut vals: Vec<String> = vec![];
    for (i, c) in keys.iter().enumerate() {
        let Some(v) = rec.get(&c.name).filter(|v| !v.is_null()) else {
            return false;
        };
        vals.push(as_text(v));
        conds.push(format!(
            "{} = ${}::text::{}",
            quote_ident(&c.name),
            i + 1,
            c.type_sql
        ));
    }
    let sql = format!(
        "select exists(select 1 from {}.{} where {})",
        quote_ident(&rel.schema),
        quote_ident(&rel.table),
        conds.join(" and ")
    );
    let params: Vec<&(dyn ToSql + Sync)> = vals.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
    match query_as_subscriber(state, ctx, &sql, &params).await {
        Some(Ok(row)) => row.get(0),
        Some(Err(e)) => {
            tracing::debug!(error = %crate::db::error_text(&e), "realtime: RLS check failed");
            false
        }
        None => false,
    }
}

/// May this subscriber SELECT from the table at all?
async fn can_select(state: &AppState, ctx: &AuthContext, rel: u32) -> bool {
    query_as_subscriber(
        state,
        ctx,
        "select has_table_privilege(current_user, $1::int8::oid, 'SELECT')",
        &[&i64::from(rel)],
    )
    .await
    .and_then(Result::ok)
    .is_some_and(|row| row.get(0))
}

/// One read-only query as the subscriber (privileges and RLS apply), rolled back.
/// `None` when no connection or transaction could be had.
async fn query_as_subscriber(
    state: &AppState,
    ctx: &AuthContext,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Option<Result<tokio_postgres::Row, tokio_postgres::Error>> {
    let mut client = state.pool.get().await.ok()?;
    let tx = begin_as(&mut client, ctx, &crate::realtime::authz::gucs(), true)
        .await
        .ok()?;
    let r = tx.query_one(sql, params).await;
    let _ = tx.rollback().await;
    Some(r)
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
        // RLS results per distinct claims, so many channels of one user cost one query.
        let mut seen: HashMap<String, bool> = HashMap::new();
        for (chan, tx, bindings, ctx) in &subs {
            let matching: Vec<&PgBinding> = bindings
                .iter()
                .filter(|b| {
                    (b.schema == "*" || b.schema == rel.schema)
                        && (b.table == "*" || b.table == rel.table)
                        && (b.action == "*" || b.action == kind)
                        && passes(&b.filters, &filter_rec)
                })
                .collect();
            if matching.is_empty() {
                continue;
            }
            // The subscriber must be able to SELECT the row (privileges and RLS); a deleted
            // row cannot be read back, so only the table privilege is checked for it.
            if !ctx.role.is_service() {
                let k = format!("{}|{}", ctx.role.as_str(), ctx.claims);
                let ok = match seen.get(&k) {
                    Some(v) => *v,
                    None => {
                        let v = match &new {
                            Some(row) if ch.kind != Kind::Delete => {
                                visible(state, ctx, rel, row).await
                            }
                            _ => can_select(state, ctx, ch.rel).await,
                        };
                        seen.insert(k, v);
                        v
                    }
                };
                if !ok {
                    continue;
                }
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
                let _ = tx.try_send(Out::Push {
                    chan: *chan,
                    event: "postgres_changes",
                    payload,
                });
            }
        }
    }
}
