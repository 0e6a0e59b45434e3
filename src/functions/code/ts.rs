//! TypeScript → JavaScript with oxc (parser, semantic analysis, the TypeScript transform and
//! codegen): types, interfaces and type-only imports are removed; enums and namespaces are
//! compiled to plain JavaScript; nothing else is down-levelled. Runs in the sandbox child,
//! since it parses untrusted text.

use std::path::Path;

use oxc::allocator::Allocator;
use oxc::codegen::Codegen;
use oxc::parser::Parser;
use oxc::semantic::SemanticBuilder;
use oxc::span::SourceType;
use oxc::transformer::{TransformOptions, Transformer};

/// The JavaScript for `code`, or the diagnostics (as stderr text) when it is not valid
/// TypeScript.
pub fn strip(code: &str) -> Result<String, String> {
    let allocator = Allocator::default();
    let source_type = SourceType::ts();
    let parsed = Parser::new(&allocator, code, source_type).parse();
    let errors = |diags: Vec<oxc::diagnostics::OxcDiagnostic>| {
        let mut text = String::new();
        for d in diags {
            text.push_str(&d.render_with_source_code(code.to_string()));
            text.push('\n');
        }
        text
    };
    if parsed.panicked || parsed.diagnostics.iter().next().is_some() {
        return Err(errors(parsed.diagnostics.into_iter().collect()));
    }
    let mut program = parsed.program;
    let semantic = SemanticBuilder::new().with_enum_eval(true).build(&program);
    let scoping = semantic.semantic.into_scoping();
    let options = TransformOptions::default();
    let transformed = Transformer::new(&allocator, Path::new("main.ts"), &options)
        .build_with_scoping(scoping, &mut program);
    if transformed.diagnostics.iter().next().is_some() {
        return Err(errors(transformed.diagnostics.into_iter().collect()));
    }
    Ok(Codegen::new().build(&program).code)
}

#[cfg(test)]
mod tests {
    use super::strip;

    #[test]
    fn strips_types_and_keeps_code() {
        let js = strip(
            "interface P { x: number }\n\
             function id<T>(v: T): T { return v; }\n\
             enum Color { Red, Green }\n\
             const p: P = { x: id<number>(2) };\n\
             console.log(p.x as number, Color.Green);\n",
        )
        .unwrap();
        assert!(!js.contains("interface"), "{js}");
        assert!(!js.contains(": number"), "{js}");
        assert!(js.contains("console.log"), "{js}");
        assert!(js.contains("Color"), "{js}");
    }

    #[test]
    fn reports_syntax_errors() {
        let e = strip("let x: = 1;").unwrap_err();
        assert!(!e.is_empty());
    }
}
