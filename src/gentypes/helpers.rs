//! The helper types appended after `Database`, as the CLI's generated file has them, so
//! code written against `Tables<"x">`, `TablesInsert`, `TablesUpdate`, `Enums` and
//! `CompositeTypes` compiles unchanged.

const HEAD: &str = r#"
type DatabaseWithoutInternals = Omit<Database, "__InternalSupabase">

type DefaultSchema = DatabaseWithoutInternals[Extract<keyof Database, "public">]

export type Tables<
  DefaultSchemaTableNameOrOptions extends
    | keyof (DefaultSchema["Tables"] & DefaultSchema["Views"])
    | { schema: keyof DatabaseWithoutInternals },
  TableName extends DefaultSchemaTableNameOrOptions extends {
    schema: keyof DatabaseWithoutInternals
  }
    ? keyof (DatabaseWithoutInternals[DefaultSchemaTableNameOrOptions["schema"]]["Tables"] &
        DatabaseWithoutInternals[DefaultSchemaTableNameOrOptions["schema"]]["Views"])
    : never = never,
> = DefaultSchemaTableNameOrOptions extends {
  schema: keyof DatabaseWithoutInternals
}
  ? (DatabaseWithoutInternals[DefaultSchemaTableNameOrOptions["schema"]]["Tables"] &
      DatabaseWithoutInternals[DefaultSchemaTableNameOrOptions["schema"]]["Views"])[TableName] extends {
      Row: infer R
    }
    ? R
    : never
  : DefaultSchemaTableNameOrOptions extends keyof (DefaultSchema["Tables"] &
        DefaultSchema["Views"])
    ? (DefaultSchema["Tables"] &
        DefaultSchema["Views"])[DefaultSchemaTableNameOrOptions] extends {
        Row: infer R
      }
      ? R
      : never
    : never

"#;

/// `TablesInsert` and `TablesUpdate`: one shape, for a table's `Insert` and `Update` types.
const TABLES_WRITE: &str = r#"export type Tables{KIND}<
  DefaultSchemaTableNameOrOptions extends
    | keyof DefaultSchema["Tables"]
    | { schema: keyof DatabaseWithoutInternals },
  TableName extends DefaultSchemaTableNameOrOptions extends {
    schema: keyof DatabaseWithoutInternals
  }
    ? keyof DatabaseWithoutInternals[DefaultSchemaTableNameOrOptions["schema"]]["Tables"]
    : never = never,
> = DefaultSchemaTableNameOrOptions extends {
  schema: keyof DatabaseWithoutInternals
}
  ? DatabaseWithoutInternals[DefaultSchemaTableNameOrOptions["schema"]]["Tables"][TableName] extends {
      {KIND}: infer {V}
    }
    ? {V}
    : never
  : DefaultSchemaTableNameOrOptions extends keyof DefaultSchema["Tables"]
    ? DefaultSchema["Tables"][DefaultSchemaTableNameOrOptions] extends {
        {KIND}: infer {V}
      }
      ? {V}
      : never
    : never

"#;

/// `Enums` and `CompositeTypes`: one shape, for a schema's enums and composite types.
const BY_NAME: &str = r#"export type {KEY}<
  {PARAM} extends
    | keyof DefaultSchema["{KEY}"]
    | { schema: keyof DatabaseWithoutInternals },
  {NAME} extends {PARAM} extends {
    schema: keyof DatabaseWithoutInternals
  }
    ? keyof DatabaseWithoutInternals[{PARAM}["schema"]]["{KEY}"]
    : never = never,
> = {PARAM} extends {
  schema: keyof DatabaseWithoutInternals
}
  ? DatabaseWithoutInternals[{PARAM}["schema"]]["{KEY}"][{NAME}]
  : {PARAM} extends keyof DefaultSchema["{KEY}"]
    ? DefaultSchema["{KEY}"][{PARAM}]
    : never
"#;

/// The whole helper text.
pub fn helpers() -> String {
    let mut o = String::from(HEAD);
    for (kind, var) in [("Insert", "I"), ("Update", "U")] {
        o.push_str(&TABLES_WRITE.replace("{KIND}", kind).replace("{V}", var));
    }
    let by_name: Vec<String> = [
        ("Enums", "DefaultSchemaEnumNameOrOptions", "EnumName"),
        (
            "CompositeTypes",
            "PublicCompositeTypeNameOrOptions",
            "CompositeTypeName",
        ),
    ]
    .iter()
    .map(|(key, param, name)| {
        BY_NAME
            .replace("{KEY}", key)
            .replace("{PARAM}", param)
            .replace("{NAME}", name)
    })
    .collect();
    o.push_str(&by_name.join("\n"));
    o
}
