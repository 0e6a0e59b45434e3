//! The dashboard's changes end to end: rows, filters, columns and RLS in the table editor;
//! invite, recovery, ban and delete of users through the auth admin code; folders, signed
//! URLs, downloads, deletes and bucket rules through the storage code.
use crate::common;
use crate::dashboard::{open_session, page, post_csrf};

use common::{TestServer, SERVICE_KEY};

/// The message of a 303 back to a page (`msg=` for success, `err=` for failure).
fn outcome(r: &common::reqwest_like::Response) -> Result<String, String> {
    let loc = r.header("location").unwrap_or("");
    let q = loc.split_once('?').map(|x| x.1).unwrap_or("");
    let pairs: Vec<(String, String)> = form_urlencoded::parse(q.as_bytes()).into_owned().collect();
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    match (get("msg"), get("err")) {
        (Some(m), _) => Ok(m),
        (_, Some(e)) => Err(e),
        _ => Err(format!("no outcome: {} {loc}", r.status)),
    }
}

#[tokio::test]
async fn rows_columns_users_and_objects_change_through_the_dashboard() {
    let s = TestServer::start().await;
    let sess = open_session(&s).await;
    let post = async |path: &str, pairs: &[(&str, &str)]| post_csrf(&s, &sess, path, pairs).await;
    s.batch("create table public.items (id int primary key, name text, qty int); insert into public.items values (1, 'a', 5), (2, 'b', 7), (3, 'c', 1)").await;
    let t = [("schema", "public"), ("table", "items")];
    // Filter and sort are applied by the database, with the value bound.
    let r = page(
        &s,
        &sess,
        "tables?schema=public&table=items&fcol=qty&fop=gt&fval=4&sort=qty&dir=desc",
    )
    .await;
    let html = r.text();
    assert!(html.contains("2 rows"), "filtered count");
    assert!(
        html.find(">b<").unwrap() < html.find(">a<").unwrap(),
        "sorted desc"
    );
    let r = page(
        &s,
        &sess,
        "tables?schema=public&table=items&fcol=name&fop=eq&fval=x'%20or%201=1--",
    )
    .await;
    assert!(r.text().contains("0 rows"), "a filter value is a value");
    // Edit and delete by the row's ctid.
    let ctid: String = s
        .sql("select ctid::text from public.items where id = 2")
        .await[0]
        .get(0);
    let mut upd = t.to_vec();
    upd.extend([
        ("ctid", ctid.as_str()),
        ("c:id", "2"),
        ("c:name", "bee"),
        ("c:qty", ""),
    ]);
    assert_eq!(
        outcome(&post("tables/row/update", &upd).await),
        Ok("Row saved".into())
    );
    let row = &s
        .sql("select name, qty from public.items where id = 2")
        .await[0];
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, Option<i32>>(1)),
        ("bee".into(), None)
    );
    let ctid: String = s
        .sql("select ctid::text from public.items where id = 3")
        .await[0]
        .get(0);
    let mut del = t.to_vec();
    del.push(("ctid", &ctid));
    assert!(outcome(&post("tables/row/delete", &del).await).is_ok());
    assert!(s
        .sql("select 1 from public.items where id = 3")
        .await
        .is_empty());
    // A bad value is the database's error, shown back.
    let mut bad = t.to_vec();
    bad.extend([("c:id", "9"), ("c:qty", "many")]);
    let e = outcome(&post("tables/row/insert", &bad).await).unwrap_err();
    assert!(e.contains("invalid input syntax"), "{e}");
    // A column; a type that is SQL, not a type, is refused.
    let mut col = t.to_vec();
    col.extend([
        ("name", "note"),
        ("type", "text"),
        ("default", "n/a'; drop table x"),
    ]);
    assert!(outcome(&post("tables/column", &col).await).is_ok());
    let d: String = s.sql("select column_default from information_schema.columns where table_name = 'items' and column_name = 'note'").await[0].get(0);
    assert!(d.starts_with("'n/a''; drop table x'"), "{d}");
    let mut col = t.to_vec();
    col.extend([("name", "evil"), ("type", "int; drop table public.items")]);
    assert!(outcome(&post("tables/column", &col).await).is_err());
    assert_eq!(s.sql("select 1 from public.items").await.len(), 2);
    // RLS off and on again.
    let mut rls = t.to_vec();
    rls.push(("on", "1"));
    assert!(outcome(&post("tables/rls", &rls).await).is_ok());
    assert!(s
        .sql("select relrowsecurity from pg_class where relname = 'items'")
        .await[0]
        .get::<_, bool>(0));

    // Users: invite, recovery into the local inbox, ban, delete.
    assert!(outcome(&post("users/invite", &[("email", "inv@example.test")]).await).is_ok());
    let id: String = s
        .sql("select id::text from auth.users where email = 'inv@example.test'")
        .await[0]
        .get(0);
    let r = post(
        "users/recover",
        &[("id", &id), ("email", "inv@example.test")],
    )
    .await;
    assert!(outcome(&r).is_ok(), "{:?}", outcome(&r));
    let kinds: Vec<String> = s
        .sql(
            "select kind from auth.oxibase_outbox where recipient = 'inv@example.test' order by id",
        )
        .await
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(kinds.len(), 2, "{kinds:?}");
    assert!(page(&s, &sess, "users")
        .await
        .text()
        .contains("inv@example.test"));
    assert!(outcome(&post("users/ban", &[("id", &id), ("ban", "876000h")]).await).is_ok());
    assert_eq!(
        s.sql(&format!(
            "select 1 from auth.users where id = '{id}' and banned_until > now()"
        ))
        .await
        .len(),
        1
    );
    assert!(outcome(&post("users/delete", &[("id", &id)]).await).is_ok());
    assert!(s
        .sql(&format!("select 1 from auth.users where id = '{id}'"))
        .await
        .is_empty());

    // Storage: a folder, a signed URL, a download, delete, empty and delete the bucket.
    assert!(outcome(&post("storage/bucket/create", &[("name", "docs")]).await).is_ok());
    let r = s
        .http
        .send(
            "POST",
            &format!("{}/storage/v1/object/docs/reports/q1.txt", s.url),
            &[
                ("authorization", &format!("Bearer {SERVICE_KEY}")),
                ("content-type", "text/plain"),
            ],
            "quarter one",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let root = page(&s, &sess, "storage?bucket=docs").await.text();
    assert!(
        root.contains("reports") && !root.contains("q1.txt"),
        "folders first"
    );
    assert!(page(&s, &sess, "storage?bucket=docs&prefix=reports")
        .await
        .text()
        .contains("q1.txt"));
    let signed = outcome(
        &post(
            "storage/object/sign",
            &[("bucket", "docs"), ("path", "reports/q1.txt")],
        )
        .await,
    )
    .unwrap();
    let url = signed.rsplit(' ').next().unwrap();
    assert_eq!(
        s.http.get(&format!("{}{url}", s.url), &[]).await.text(),
        "quarter one"
    );
    let r = page(
        &s,
        &sess,
        "storage/download?bucket=docs&path=reports/q1.txt",
    )
    .await;
    assert_eq!(r.status, 303);
    let to = r.header("location").unwrap().to_string();
    let r = s.http.get(&format!("{}{to}", s.url), &[]).await;
    assert_eq!(r.text(), "quarter one");
    assert!(r
        .header("content-disposition")
        .unwrap_or("")
        .contains("attachment"));
    let e = outcome(&post("storage/bucket/delete", &[("bucket", "docs")]).await).unwrap_err();
    assert!(e.to_lowercase().contains("not empty"), "{e}");
    assert!(outcome(
        &post(
            "storage/object/delete",
            &[("bucket", "docs"), ("path", "reports/q1.txt")]
        )
        .await
    )
    .is_ok());
    assert!(outcome(&post("storage/bucket/empty", &[("bucket", "docs")]).await).is_ok());
    assert!(outcome(&post("storage/bucket/delete", &[("bucket", "docs")]).await).is_ok());
    assert!(s
        .sql("select 1 from storage.buckets where id = 'docs'")
        .await
        .is_empty());
    s.server.shutdown().await;
}
