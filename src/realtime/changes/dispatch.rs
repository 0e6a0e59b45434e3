//! Delivery of decoded changes to the subscribers whose bindings match, after their RLS check.
//!
//! A batch (the transactions the capture had at hand) is checked in few calls: per table,
//! one per group of subscribers watching the same rows (and one for table privilege), all
//! sent down capture's own connection at once; then every change goes out in order.

use std::collections::HashMap;

use serde_json::{json, Map, Value};
use tokio_postgres::types::ToSql;

use super::bindings::{as_text, passes, select_columns, PgBinding};
use super::pgoutput::{Change, Column, Decoder, Kind, Relation};
use super::types::{commit_timestamp, record};
use crate::identity::AuthContext;
use crate::realtime::hub::{ChanId, Out, Outbox};
use crate::state::AppState;
use deadpool_postgres::ClientWrapper;

/// Rows of one table checked in one call at most (bounds the call's duration).
const ROWS_PER_CHECK: usize = 200;

fn claims_key(ctx: &AuthContext) -> String {
    format!("{}|{}", ctx.role.as_str(), ctx.claims)
}

/// One subscriber channel a change matched.
struct Match<'a> {
    chan: ChanId,
    tx: &'a Outbox,
    bindings: Vec<&'a PgBinding>,
    ctx: &'a AuthContext,
}

/// A change ready to go: its payload and who it matched.
struct Prepared<'a> {
    rel_oid: u32,
    rel: &'a Relation,
    /// The row to read back under RLS (inserts and updates on tables with RLS).
    row: Option<Map<String, Value>>,
    xid: u32,
    data: Value,
    matched: Vec<Match<'a>>,
    /// Visibility by claims key (service_role always sees).
    verdicts: HashMap<String, bool>,
}

impl Prepared<'_> {
    fn allows(&self, ctx: &AuthContext) -> bool {
        ctx.role.is_service()
            || self
                .verdicts
                .get(&claims_key(ctx))
                .copied()
                .unwrap_or(false)
    }

    /// Distinct non-service subscribers of this change.
    fn claimants(&self) -> impl Iterator<Item = &AuthContext> {
        self.matched
            .iter()
            .map(|m| m.ctx)
            .filter(|c| !c.role.is_service())
    }
}

const ROWS_VISIBLE_MANY: &str =
    "select realtime.oxibase_rows_visible_many($1::int8::oid::regclass, \
     $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7, $8, $9::int8[])";

const TABLE_PRIVILEGE: &str =
    "select coalesce(has_table_privilege(r.oid, $1::int8::oid, 'SELECT'), false) \
     from unnest($2::text[]) with ordinality as u(name, n) \
     left join pg_catalog.pg_roles r on r.rolname = u.name order by u.n";

/// One question to the database about some changes of one table, for their distinct
/// claimants (`subs`).
enum Ask<'a> {
    /// One answer per claimant, in order: may their role SELECT from the table at all?
    Privilege { subs: &'a [&'a AuthContext] },
    /// Claimant k's answer on row r at `k * rows.len() + r`: may they SELECT the row (by
    /// primary key) under RLS? Rows without a usable key are visible to nobody.
    Rows {
        rel: &'a Relation,
        rows: Vec<&'a Map<String, Value>>,
        xids: &'a [i64],
        subs: &'a [&'a AuthContext],
    },
}

impl Ask<'_> {
    async fn on(&self, client: &ClientWrapper, rel_oid: u32) -> Result<Vec<bool>, String> {
        match self {
            Ask::Privilege { subs } => table_privilege(client, rel_oid, subs).await,
            Ask::Rows {
                rel,
                rows,
                xids,
                subs,
            } => rows_visible(client, rel, rel_oid, rows, xids, subs).await,
        }
    }

    fn what(&self) -> &'static str {
        match self {
            Ask::Privilege { .. } => "table privilege",
            Ask::Rows { .. } => "rows visible",
        }
    }
}

async fn rows_visible(
    client: &ClientWrapper,
    rel: &Relation,
    rel_oid: u32,
    rows: &[&Map<String, Value>],
    xids: &[i64],
    subs: &[&AuthContext],
) -> Result<Vec<bool>, String> {
    let keys: Vec<&Column> = rel
        .pk
        .iter()
        .filter_map(|k| rel.columns.iter().find(|c| &c.name == k))
        .collect();
    if keys.is_empty() || keys.iter().any(|c| c.type_sql.is_empty()) {
        return Ok(vec![false; subs.len() * rows.len()]);
    }
    let names: Vec<&str> = keys.iter().map(|c| c.name.as_str()).collect();
    let types: Vec<&str> = keys.iter().map(|c| c.type_sql.as_str()).collect();
    // Rows lacking a key value are checked against an impossible key: they answer false.
    let mut usable = vec![true; rows.len()];
    let mut vals: Vec<Option<String>> = Vec::with_capacity(rows.len() * keys.len());
    for (r, row) in rows.iter().enumerate() {
        for c in &keys {
            match row.get(&c.name).filter(|v| !v.is_null()) {
                Some(v) => vals.push(Some(as_text(v))),
                None => {
                    usable[r] = false;
                    vals.push(None);
                }
            }
        }
    }
    let roles: Vec<&str> = subs.iter().map(|c| c.role.as_str()).collect();
    let claims: Vec<String> = subs.iter().map(|c| c.claims.to_string()).collect();
    let gucs = crate::realtime::authz::gucs();
    let stmt = client
        .prepare_cached(ROWS_VISIBLE_MANY)
        .await
        .map_err(|e| crate::db::error_text(&e))?;
    let params: [&(dyn ToSql + Sync); 9] = [
        &i64::from(rel_oid),
        &names,
        &types,
        &vals,
        &roles,
        &claims,
        &gucs.method,
        &gucs.path,
        &xids,
    ];
    let row = client
        .query_one(&stmt, &params)
        .await
        .map_err(|e| crate::db::error_text(&e))?;
    let out: Vec<Option<bool>> = row.try_get(0).map_err(|e| e.to_string())?;
    if out.len() != subs.len() * rows.len() {
        return Err("visibility check answered the wrong number of rows".into());
    }
    Ok(out
        .into_iter()
        .enumerate()
        .map(|(i, b)| b.unwrap_or(false) && usable[i % rows.len()])
        .collect())
}

async fn table_privilege(
    client: &ClientWrapper,
    rel_oid: u32,
    subs: &[&AuthContext],
) -> Result<Vec<bool>, String> {
    let roles: Vec<&str> = subs.iter().map(|c| c.role.as_str()).collect();
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

/// Ask on the batch's connection; a check that failed (connection cut, pool exhausted) is
/// tried again on a connection of its own before its changes are withheld: a change is
/// never sent to someone not known to be allowed.
async fn answer(
    state: &AppState,
    shared: Option<&ClientWrapper>,
    rel_oid: u32,
    ask: &Ask<'_>,
) -> Option<Vec<bool>> {
    let mut last = String::from("no connection");
    if let Some(c) = shared {
        count_trip(state);
        match ask.on(c, rel_oid).await {
            Ok(v) => return Some(v),
            Err(e) => last = e,
        }
    }
    for attempt in 1..3u64 {
        tokio::time::sleep(std::time::Duration::from_millis(50 * attempt)).await;
        count_trip(state);
        match state.realtime.capture.checks.get().await {
            Ok(c) => match ask.on(&c, rel_oid).await {
                Ok(v) => return Some(v),
                Err(e) => last = e,
            },
            Err(e) => last = e.to_string(),
        }
    }
    tracing::warn!(error = %last, what = ask.what(), "realtime: visibility check failed; changes withheld");
    None
}

/// One check to make: the changes `idx` (of one table), of one kind.
struct Job {
    rel_oid: u32,
    idx: Vec<usize>,
    check: Check,
}

/// The checks a batch needs: per table, one for its changes that need a row read back
/// (RLS), per group of claimants and at most `ROWS_PER_CHECK` rows, and one for the rest
/// (table privilege).
fn jobs(prepared: &[Prepared<'_>]) -> Vec<Job> {
    let mut by_rel: Vec<(u32, Vec<usize>)> = vec![];
    for (i, p) in prepared.iter().enumerate() {
        if p.claimants().next().is_none() {
            continue;
        }
        match by_rel.iter_mut().find(|(rel, _)| *rel == p.rel_oid) {
            Some((_, idx)) => idx.push(i),
            None => by_rel.push((p.rel_oid, vec![i])),
        }
    }
    let mut jobs = vec![];
    for (rel_oid, idx) in by_rel {
        let (rls, plain): (Vec<usize>, Vec<usize>) = idx
            .into_iter()
            .partition(|i| prepared[*i].rel.rls && prepared[*i].row.is_some());
        if !plain.is_empty() {
            jobs.push(Job {
                rel_oid,
                idx: plain,
                check: Check::Privilege,
            });
        }
        for group in by_claimants(prepared, rls) {
            for part in group.chunks(ROWS_PER_CHECK) {
                jobs.push(Job {
                    rel_oid,
                    idx: part.to_vec(),
                    check: Check::Rows,
                });
            }
        }
    }
    jobs
}

/// Fill the verdicts of every prepared change. All checks of a batch go down one
/// connection at once (pipelined): the database answers them back to back, so a batch
/// waits about one round trip however many groups of claimants it has.
async fn check_all(state: &AppState, prepared: &mut [Prepared<'_>]) {
    let jobs = jobs(prepared);
    if jobs.is_empty() {
        return;
    }
    let shared = state.realtime.capture.checks.get().await.ok();
    let answers = {
        let ro: &[Prepared<'_>] = prepared;
        futures::future::join_all(
            jobs.iter()
                .map(|job| job_verdicts(state, shared.as_deref(), ro, job)),
        )
        .await
    };
    for (job, (keys, answers)) in jobs.iter().zip(answers) {
        for (r, i) in job.idx.iter().enumerate() {
            for (k, key) in keys.iter().enumerate() {
                // Privilege answers are one per claimant; row answers one per claimant and row.
                let at = match job.check {
                    Check::Privilege => k,
                    Check::Rows => k * job.idx.len() + r,
                };
                let ok = answers.get(at).copied().unwrap_or(false);
                prepared[*i].verdicts.insert(key.clone(), ok);
            }
        }
    }
}

/// The changes grouped by who claims them (their distinct subscribers), in first-seen
/// order: one check covers every row of a group for every subscriber of it, so nobody is
/// checked for a row they did not subscribe to. Where every subscriber watches every row
/// (one group) that is one call; where each user watches their own rows (a chat's
/// conversations) it is one small call per user, not rows × users checks.
fn by_claimants(prepared: &[Prepared<'_>], idx: Vec<usize>) -> Vec<Vec<usize>> {
    let mut groups: Vec<(Vec<String>, Vec<usize>)> = vec![];
    for i in idx {
        let mut who: Vec<String> = prepared[i].claimants().map(claims_key).collect();
        who.sort_unstable();
        who.dedup();
        match groups.iter_mut().find(|(w, _)| *w == who) {
            Some((_, members)) => members.push(i),
            None => groups.push((who, vec![i])),
        }
    }
    groups.into_iter().map(|(_, members)| members).collect()
}

/// Distinct claim sets among these changes' subscribers, in first-seen order.
fn distinct<'a>(prepared: &'a [Prepared<'a>], idx: &[usize]) -> Vec<&'a AuthContext> {
    let mut seen = std::collections::HashSet::new();
    let mut out = vec![];
    for i in idx {
        for ctx in prepared[*i].claimants() {
            if seen.insert(claims_key(ctx)) {
                out.push(ctx);
            }
        }
    }
    out
}

/// What a verdict answers: whether the claimant may read the table at all (changes without
/// a row to read back), or whether each row is visible to them under RLS.
#[derive(Clone, Copy)]
enum Check {
    Privilege,
    Rows,
}

/// One job's claimants (by claims key) and their answers (as [`Ask`] lays them out); no
/// answers when the check failed (then nobody is allowed).
async fn job_verdicts(
    state: &AppState,
    shared: Option<&ClientWrapper>,
    prepared: &[Prepared<'_>],
    job: &Job,
) -> (Vec<String>, Vec<bool>) {
    let subs = distinct(prepared, &job.idx);
    let answers = match job.check {
        Check::Privilege => answer(state, shared, job.rel_oid, &Ask::Privilege { subs: &subs })
            .await
            .unwrap_or_default(),
        Check::Rows => rows_verdicts(state, shared, job.rel_oid, prepared, &job.idx, &subs).await,
    };
    let keys = subs.iter().map(|c| claims_key(c)).collect();
    (keys, answers)
}

/// Claimant k's verdict on row r at `k * rows + r`.
async fn rows_verdicts(
    state: &AppState,
    shared: Option<&ClientWrapper>,
    rel_oid: u32,
    prepared: &[Prepared<'_>],
    idx: &[usize],
    subs: &[&AuthContext],
) -> Vec<bool> {
    let rel = prepared[idx[0]].rel;
    let rows: Vec<&Map<String, Value>> = idx
        .iter()
        .filter_map(|i| prepared[*i].row.as_ref())
        .collect();
    let mut xids: Vec<i64> = idx.iter().map(|i| i64::from(prepared[*i].xid)).collect();
    xids.sort_unstable();
    xids.dedup();
    let ask = Ask::Rows {
        rel,
        rows: rows.clone(),
        xids: &xids,
        subs,
    };
    let mut answers = answer(state, shared, rel_oid, &ask)
        .await
        .unwrap_or_default();
    // Rows nobody may see are asked once more, a moment later: a row is sometimes not
    // yet visible to the check though its transaction was streamed.
    let n = rows.len();
    let hidden: Vec<usize> = (0..n)
        .filter(|r| (0..subs.len()).all(|k| !answers.get(k * n + r).copied().unwrap_or(true)))
        .collect();
    if !answers.is_empty() && !hidden.is_empty() {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let again = Ask::Rows {
            rel,
            rows: hidden.iter().map(|r| rows[*r]).collect(),
            xids: &xids,
            subs,
        };
        if let Some(second) = answer(state, shared, rel_oid, &again).await {
            let m = hidden.len();
            let mut flipped = 0;
            for (h, r) in hidden.iter().enumerate() {
                for k in 0..subs.len() {
                    if second.get(k * m + h).copied().unwrap_or(false) {
                        answers[k * n + r] = true;
                        flipped += 1;
                    }
                }
            }
            if flipped > 0 {
                tracing::debug!(
                    flipped,
                    rows = hidden.len(),
                    "realtime: rows visible only on a second check"
                );
            }
        }
    }
    answers
}

fn count_trip(state: &AppState) {
    state
        .realtime
        .rls_round_trips
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

type Subscriber = (ChanId, Outbox, Vec<PgBinding>, AuthContext);

/// The payload of one change and the channels whose bindings match it.
fn prepare<'a>(subs: &'a [Subscriber], dec: &'a Decoder, ch: &Change) -> Option<Prepared<'a>> {
    let rel = dec.relations.get(&ch.rel)?;
    let old = ch.old.as_ref().map(|o| record(rel, o, None, ch.old_is_key));
    let new = ch.new.as_ref().map(|n| record(rel, n, old.as_ref(), false));
    let kind = match ch.kind {
        Kind::Insert => "INSERT",
        Kind::Update => "UPDATE",
        Kind::Delete => "DELETE",
    };
    let filter_rec = match ch.kind {
        Kind::Delete => old.as_ref(),
        _ => new.as_ref(),
    };
    let empty = Map::new();
    let filter_rec = filter_rec.unwrap_or(&empty);
    let matched: Vec<Match> = subs
        .iter()
        .filter_map(|(chan, tx, bindings, ctx)| {
            let matching: Vec<&PgBinding> = bindings
                .iter()
                .filter(|b| {
                    (b.schema == "*" || b.schema == rel.schema)
                        && (b.table == "*" || b.table == rel.table)
                        && (b.action == "*" || b.action == kind)
                        && passes(&b.filters, filter_rec)
                })
                .collect();
            (!matching.is_empty()).then_some(Match {
                chan: *chan,
                tx,
                bindings: matching,
                ctx,
            })
        })
        .collect();
    if matched.is_empty() {
        return None;
    }
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
    Some(Prepared {
        rel_oid: ch.rel,
        rel,
        xid: ch.xid,
        row: new.filter(|_| ch.kind != Kind::Delete && rel.rls),
        data,
        matched,
        verdicts: HashMap::new(),
    })
}

pub(super) async fn dispatch(state: &AppState, dec: &Decoder, changes: Vec<Change>) {
    let subs = state.realtime.hub.pg_subscribers();
    if subs.is_empty() {
        return;
    }
    let mut prepared: Vec<Prepared> = changes
        .iter()
        .filter_map(|ch| prepare(&subs, dec, ch))
        .collect();
    let started = std::time::Instant::now();
    let trips = state
        .realtime
        .rls_round_trips
        .load(std::sync::atomic::Ordering::Relaxed);
    check_all(state, &mut prepared).await;
    tracing::debug!(
        changes = changes.len(),
        matched = prepared.len(),
        round_trips = state
            .realtime
            .rls_round_trips
            .load(std::sync::atomic::Ordering::Relaxed)
            - trips,
        check_ms = started.elapsed().as_millis() as u64,
        "realtime: batch checked"
    );
    for p in &prepared {
        for m in p.matched.iter().filter(|m| p.allows(m.ctx)) {
            // One message per distinct column selection (as Supabase groups them).
            let mut groups: Vec<(Option<&Vec<String>>, Vec<u32>)> = vec![];
            for b in &m.bindings {
                match groups.iter_mut().find(|(sel, _)| *sel == b.select.as_ref()) {
                    Some((_, ids)) => ids.push(b.id),
                    None => groups.push((b.select.as_ref(), vec![b.id])),
                }
            }
            for (sel, ids) in groups {
                let payload = match sel {
                    None => json!({"ids": ids, "data": p.data}),
                    Some(cols) => {
                        json!({"ids": ids, "data": select_columns(&p.data, cols, &p.rel.pk)})
                    }
                };
                m.tx.send(Out::Push {
                    chan: m.chan,
                    event: "postgres_changes",
                    payload,
                });
            }
        }
    }
}
