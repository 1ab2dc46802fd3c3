//! Rendered error messages: `file:line:col: message`, the line, a caret, help.

use rbuild_parser::parse;

fn render(src: &str) -> String {
    let err = parse(src).expect_err("the Dockerfile should be rejected");
    err.render("Dockerfile", src)
}

#[test]
fn unknown_instruction() {
    insta::assert_snapshot!(render("FROM alpine\nRUN true\nFORM x\n"));
}

#[test]
fn unknown_instruction_far_from_any() {
    insta::assert_snapshot!(render("FROM alpine\nFROBNICATE x\n"));
}

#[test]
fn bad_flag_lists_accepted_flags() {
    insta::assert_snapshot!(render("FROM alpine\nCOPY --chmod=644 --form=build a /b\n"));
}

#[test]
fn flag_on_instruction_without_flags() {
    insta::assert_snapshot!(render("FROM alpine\nWORKDIR --parents /x\n"));
}

#[test]
fn env_without_value() {
    insta::assert_snapshot!(render("FROM busybox\n\nENV PATH\n"));
}

#[test]
fn unterminated_heredoc() {
    insta::assert_snapshot!(render("FROM alpine\nRUN cat <<-EOT > /x\n\thello\n"));
}

#[test]
fn empty_file() {
    insta::assert_snapshot!(render(""));
}

#[test]
fn only_comments() {
    insta::assert_snapshot!(render("# Hello\n# These are just comments\n\n"));
}

#[test]
fn nested_json() {
    insta::assert_snapshot!(render("CMD [ \"echo\", [ \"nested json\" ] ]\n"));
}

#[test]
fn bad_mount_type() {
    insta::assert_snapshot!(render(
        "FROM alpine\nRUN --mount=type=cahce,target=/root/.cache \\\n    pip install x\n"
    ));
}

#[test]
fn bad_mount_key() {
    insta::assert_snapshot!(render(
        "FROM alpine\nRUN --mount=type=cache,targt=/c true\n"
    ));
}

#[test]
fn error_on_continuation_line_points_there() {
    insta::assert_snapshot!(render(
        "FROM alpine\nRUN --network=none \\\n    --security=maybe \\\n    true\n"
    ));
}

#[test]
fn tabs_keep_the_caret_aligned() {
    insta::assert_snapshot!(render("FROM alpine\n\tCOPY\t--link=perhaps a /b\n"));
}

#[test]
fn invalid_stage_name() {
    insta::assert_snapshot!(render("FROM alpine AS 2build\n"));
}

#[test]
fn invalid_escape_directive() {
    insta::assert_snapshot!(render("# escape=|\nFROM alpine\n"));
}

#[test]
fn shell_not_json() {
    insta::assert_snapshot!(render("FROM alpine\nSHELL /bin/bash -c\n"));
}

#[test]
fn onbuild_from() {
    insta::assert_snapshot!(render("FROM alpine\nONBUILD FROM busybox\n"));
}

#[test]
fn copy_without_destination() {
    insta::assert_snapshot!(render("FROM alpine\nCOPY app.tar.gz\n"));
}

#[test]
fn empty_continuation_line_warning() {
    let src = "FROM alpine\nRUN apk add \\\n\n    curl\n";
    let df = parse(src).unwrap();
    insta::assert_snapshot!(df.warnings[0].render("Dockerfile", src));
}

#[test]
fn byte_order_mark_is_not_a_column() {
    let src = "\u{feff}FORM alpine\n";
    let e = parse(src).unwrap_err();
    assert_eq!((e.line, e.column), (1, 1));
    insta::assert_snapshot!(e.render("Dockerfile", src));
}
