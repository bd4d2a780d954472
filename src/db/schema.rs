// The one schema for every backend; migrations/<backend>/ create it.

diesel::table! {
    tokens (id) {
        id -> BigInt,
        user_id -> Text,
        provider -> Text,
        state -> Text,
        generation -> BigInt,
        key_id -> Text,
        refresh_token -> Binary,
        rt_expires_at -> BigInt,
        access_token -> Nullable<Binary>,
        expires_at -> BigInt,
        expires_in -> BigInt,
        token_type -> Nullable<Text>,
        scope -> Text,
        audience -> Nullable<Text>,
        client_id -> Nullable<Text>,
        issued_at -> BigInt,
        access_token_revoked_at -> BigInt,
        refresh_token_revoked_at -> BigInt,
        lease_owner -> Nullable<Text>,
        lease_expires_at -> Nullable<BigInt>,
        created_at -> BigInt,
        updated_at -> BigInt,
        import_generation -> Nullable<BigInt>,
        grant_scope -> Text,
    }
}

diesel::table! {
    client_tokens (id) {
        id -> BigInt,
        token_key -> Text,
        provider -> Text,
        scope -> Text,
        audience -> Nullable<Text>,
        generation -> BigInt,
        key_id -> Nullable<Text>,
        access_token -> Nullable<Binary>,
        token_type -> Nullable<Text>,
        expires_at -> BigInt,
        expires_in -> BigInt,
        lease_owner -> Nullable<Text>,
        lease_expires_at -> Nullable<BigInt>,
        updated_at -> BigInt,
    }
}

diesel::table! {
    audit_events (id) {
        id -> BigInt,
        first_at -> BigInt,
        last_at -> BigInt,
        occurrences -> BigInt,
        kind -> Text,
        origin -> Nullable<Text>,
        outcome -> Text,
        caller -> Nullable<Text>,
        caller_group -> Nullable<Text>,
        on_behalf_of -> Nullable<Text>,
        user_id -> Nullable<Text>,
        provider -> Nullable<Text>,
        client_id -> Nullable<Text>,
        scopes -> Nullable<Text>,
        audience -> Nullable<Text>,
        protocol -> Text,
        client_addresses -> Nullable<Text>,
        replica -> Text,
        detail -> Nullable<Text>,
    }
}
