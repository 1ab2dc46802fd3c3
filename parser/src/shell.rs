//! The shell-word lexer: `$VAR` / `${VAR:-x}` expansion and word splitting as
//! BuildKit's `frontend/dockerfile/shell` does it.
