//! The body and app-answer parsers: whole bodies refused with positions only, bodies cut into
//! apps that parse one by one, single-app answers.
use super::*;

#[test]
fn whole_bodies_are_refused_with_positions_and_key_names_only() {
    assert_eq!(
        parse_apps(br#"{"apps":[{"id":"/a"},{"id":"/b"}]}"#)
            .expect("valid")
            .apps
            .len(),
        2
    );
    assert!(matches!(parse_apps(b""), Err(ApiError::Truncated)));
    assert!(matches!(
        parse_apps(br#"{"apps":[1,2"#),
        Err(ApiError::Truncated)
    ));
    let e = parse_apps(b"<html>502</html>").expect_err("not JSON");
    assert!(matches!(e, ApiError::NotJson { line: 1, .. }), "{e:?}");
    assert!(e.to_string().contains("not valid JSON"), "{e}");
    assert!(matches!(
        parse_apps(br#"{"message":"no leader"}"#),
        Err(ApiError::Missing { key: "apps", .. })
    ));
    assert!(matches!(
        parse_apps(b"[]"),
        Err(ApiError::NotAnObject("an array"))
    ));
    assert!(matches!(
        parse_apps(br#"{"apps":{}} trailing"#),
        Err(ApiError::NotJson { .. })
    ));
    for body in [
        &br#"{"apps":"SECRET_VALUE"}"#[..],
        br#"{"apps":["SECRET_VALUE"}"#,
        br#"{"SECRET_VALUE":1}"#,
    ] {
        let err = parse_apps(body).expect_err("refused");
        assert!(
            !err.to_string().contains("SECRET_VALUE") || body.starts_with(br#"{"SECRET"#),
            "values stay out of errors: {err}"
        );
    }
}

#[test]
fn a_body_is_cut_into_apps_that_parse_one_by_one() {
    let body = AppsBody::split(Bytes::from_static(
        br#"{"apps": [{"id": "/a"}, {"id": "/b", "labels": []}, {"id": 7}, {"id": "/c"}]}"#,
    ))
    .expect("the top level is good");
    assert_eq!(body.len(), 4);
    let apps: Vec<_> = body.apps().collect();
    let ids: Vec<_> = apps
        .iter()
        .map(|a| match a {
            Ok(app) => (0, Some(app.id.as_str())),
            Err(e) => (e.index, e.app_id.as_deref()),
        })
        .collect();
    assert_eq!(
        ids,
        [(0, Some("/a")), (1, Some("/b")), (2, None), (0, Some("/c"))]
    );
    assert_eq!(format!("{body:?}"), "AppsBody(4 apps, 77 bytes)");
    let empty = AppsBody::split(Bytes::from_static(br#"{"apps": null}"#)).expect("null");
    assert!(empty.is_empty());
}

#[test]
fn single_app_answers() {
    let app = parse_app_answer(
        br#"{"app":{"id":"/a","tasks":[{"id":"a.1","host":"10.0.0.1","ports":[31000]},{"ports":1}]}}"#,
    )
    .expect("an app answer");
    assert_eq!(
        (app.id.as_str(), app.tasks.len(), app.task_errors.len()),
        ("/a", 1, 1)
    );
    for (body, want) in [
        (&b"<html>404</html>"[..], "not valid JSON"),
        (b"{\"app\":", "truncated"),
        (br#"{"apps":[]}"#, "no \"app\""),
        (br#"{"app":null}"#, "null"),
        (br#"{"app":[{"id":"/a"}]}"#, "an array"),
        (br#"{"app":{"id":5}}"#, "does not parse"),
        (br#"{"app":{"labels":{}}}"#, "does not parse"),
        (br#"{"message":"App '/a' does not exist"}"#, "no \"app\""),
    ] {
        let e = parse_app_answer(body).expect_err("refused");
        assert!(
            e.to_string().contains(want),
            "{}: {e}",
            String::from_utf8_lossy(body)
        );
    }
}
