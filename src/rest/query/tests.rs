use super::*;

#[test]
fn logic_tree_values_may_be_array_literals() {
    let l =
        filter::parse_logic(true, false, "(id.in.(1,4),tags.cs.{is:open,priority:high})").unwrap();
    match l {
        Logic::Tree { children, .. } => {
            assert_eq!(children.len(), 2);
            match &children[1] {
                Logic::Filter(f) => {
                    assert_eq!(f.field.name, "tags");
                    assert!(
                        matches!(&f.op, Op::Simple { value, .. } if value == "{is:open,priority:high}"),
                        "{:?}",
                        f.op
                    );
                }
                o => panic!("{o:?}"),
            }
        }
        o => panic!("{o:?}"),
    }
    // outside a logic tree nothing changes: braces are not grouping in select lists
    assert_eq!(split_top("a,{b,c}", ',').unwrap().len(), 3);
    assert_eq!(split_logic("a.eq.1,b.cs.{x,y}").unwrap().len(), 2);
}

#[test]
fn select_grammar() {
    let s = parse_select("id,author:users!messages_user_fkey!inner(username,\"weird col\"),...x(a),n:data->a->>b::text,count(),price.sum()").unwrap();
    assert_eq!(s.len(), 6);
    match &s[1] {
        SelectItem::Embed(e) => {
            assert_eq!(e.name, "users");
            assert_eq!(e.alias.as_deref(), Some("author"));
            assert_eq!(e.hint.as_deref(), Some("messages_user_fkey"));
            assert_eq!(e.join, Some(JoinType::Inner));
            assert_eq!(
                e.items[1],
                SelectItem::Field {
                    field: Field::plain("weird col"),
                    alias: None,
                    cast: None,
                    agg: None,
                    agg_cast: None
                }
            );
        }
        o => panic!("{o:?}"),
    }
    assert!(matches!(&s[2], SelectItem::Embed(e) if e.spread));
    match &s[3] {
        SelectItem::Field {
            field, alias, cast, ..
        } => {
            assert_eq!(field.name, "data");
            assert_eq!(field.path.len(), 2);
            assert!(field.path[1].text);
            assert_eq!(alias.as_deref(), Some("n"));
            assert_eq!(cast.as_deref(), Some("text"));
        }
        o => panic!("{o:?}"),
    }
    assert!(matches!(&s[4], SelectItem::CountAll { .. }));
    assert!(matches!(
        &s[5],
        SelectItem::Field {
            agg: Some(Agg::Sum),
            ..
        }
    ));
    let e = parse_select("a,,b").unwrap_err();
    assert_eq!(
        e.message,
        "\"failed to parse select parameter (a,,b)\" (line 1, column 3)"
    );
    let e = parse_select("id,b(x,c!(y))").unwrap_err();
    assert_eq!(
        e.message,
        "\"failed to parse select parameter (id,b(x,c!(y)))\" (line 1, column 10)"
    );
    let e = parse_filter(Field::plain("a"), "xx.1").unwrap_err();
    assert_eq!(
        e.message,
        "\"failed to parse filter (xx.1)\" (line 1, column 1)"
    );
    assert_eq!(
        e.details,
        serde_json::json!("unexpected \"x\" expecting \"not\" or operator (eq, gt, ...)")
    );
    assert!(parse_select("a(").is_err());
    assert!(parse_select("a::int;drop").is_err());
    assert!(parse_select("x.foo()").is_err());
    let nested = parse_select("*, a(*, b(*, c(id)))").unwrap();
    assert_eq!(nested.len(), 2);
}

#[test]
fn filters() {
    let f = parse_filter(Field::plain("a"), "not.in.(1,\"b,c\",d)").unwrap();
    assert!(f.negate);
    assert_eq!(f.op, Op::In(vec!["1".into(), "b,c".into(), "d".into()]));
    let f = parse_filter(Field::plain("a"), "like(any).{a*,b*}").unwrap();
    assert_eq!(
        f.op,
        Op::Simple {
            op: "like".into(),
            quant: Some(Quant::Any),
            value: "{a*,b*}".into()
        }
    );
    let f = parse_filter(Field::plain("a"), "wfts(english).cat & dog").unwrap();
    assert_eq!(
        f.op,
        Op::Fts {
            op: "wfts".into(),
            config: Some("english".into()),
            value: "cat & dog".into()
        }
    );
    assert!(parse_filter(Field::plain("a"), "is.maybe").is_err());
    assert!(parse_filter(Field::plain("a"), "nope.1").is_err());
    assert!(parse_filter(Field::plain("a"), "eq").is_err());
    assert_eq!(
        parse_filter(Field::plain("a"), "eq.").unwrap().op,
        Op::Simple {
            op: "eq".into(),
            quant: None,
            value: "".into()
        }
    );
}

#[test]
fn logic() {
    let l = parse_logic(
        true,
        false,
        "(a.eq.1,and(b.gt.2,c.lt.3),not.or(d.is.null,e.in.(1,2)),f.eq.\"x,y\")",
    )
    .unwrap();
    match l {
        Logic::Tree { or, children, .. } => {
            assert!(or);
            assert_eq!(children.len(), 4);
            assert!(matches!(
                &children[2],
                Logic::Tree {
                    or: true,
                    negate: true,
                    ..
                }
            ));
            match &children[3] {
                Logic::Filter(f) => assert_eq!(
                    f.op,
                    Op::Simple {
                        op: "eq".into(),
                        quant: None,
                        value: "x,y".into()
                    }
                ),
                o => panic!("{o:?}"),
            }
        }
        o => panic!("{o:?}"),
    }
    assert!(parse_logic(true, false, "(a.eq.1").is_err());
    assert!(parse_logic(true, false, "a.eq.1").is_err());
}

#[test]
fn order_and_keys() {
    let o = parse_order("id.desc.nullsfirst,name,data->>x.asc,author(name).desc").unwrap();
    assert_eq!(o.len(), 4);
    assert!(o[0].desc && o[0].nulls_first == Some(true));
    assert_eq!(o[2].field.path.len(), 1);
    assert_eq!(o[3].relation.as_deref(), Some("author"));
    let e = parse_order("id.up").unwrap_err();
    assert_eq!(
        e.message,
        "\"failed to parse order (id.up)\" (line 1, column 4)"
    );
    assert_eq!(
        split_key("books.authors.or").unwrap(),
        (vec!["books".into(), "authors".into()], "or".into())
    );
    assert_eq!(split_key("not.or").unwrap(), (vec![], "not.or".into()));
    assert_eq!(
        split_key("data->a.b").unwrap(),
        (vec![], "data->a.b".into())
    );
    assert_eq!(
        parse_columns("\"a\",\"b c\"", "columns").unwrap(),
        vec!["a", "b c"]
    );
}

// Random inputs through every parser: `rest::fuzz` (the fuzz target).

/// Exhaustive-ish: no input over a small alphabet makes any parser panic.
#[test]
fn parsers_never_panic() {
    let alphabet: Vec<char> = "a.,()!:\"-> *{}\\1é".chars().collect();
    let mut inputs = vec![String::new()];
    for _ in 0..5 {
        let mut next = vec![];
        for s in &inputs {
            for c in &alphabet {
                let mut t = s.clone();
                t.push(*c);
                next.push(t);
            }
        }
        for s in &next {
            let _ = parse_select(s);
            let _ = parse_order(s);
            let _ = parse_filter(Field::plain("a"), s);
            let _ = parse_logic(true, false, s);
            let _ = split_key(s);
            let _ = parse_field(s);
            let _ = parse_columns(s, "columns");
        }
        // Keep the frontier bounded.
        inputs = next.into_iter().step_by(7).collect();
    }
}
