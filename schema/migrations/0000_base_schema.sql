-- Base schema: the normalized source-of-truth tables of the discovery platform.
-- Everything else (denormalized tables, materialized views, search) is derived
-- from these and can be rebuilt from them. psql-runnable:
--   psql -v ON_ERROR_STOP=1 -f schema/migrations/0000_base_schema.sql
-- Keys are UUIDs because the guide's Step 1.4 inserts projects with
-- gen_random_uuid() (built into Postgres 13+).
BEGIN;

CREATE TABLE IF NOT EXISTS users (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    username    text NOT NULL UNIQUE CHECK (username ~ '^[A-Za-z0-9_.-]{2,40}$'),
    name        text NOT NULL,
    email       text,
    role        text NOT NULL DEFAULT 'member' CHECK (role IN ('builder', 'investor', 'member')),
    is_admin    boolean NOT NULL DEFAULT false,
    bio         text NOT NULL DEFAULT '',
    is_deleted  boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Communities ("chains") with forums.
CREATE TABLE IF NOT EXISTS chains (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    slug        text NOT NULL UNIQUE,
    name        text NOT NULL,
    description text NOT NULL DEFAULT '',
    owner_id    uuid REFERENCES users (id) ON DELETE SET NULL,
    is_deleted  boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS chain_members (
    chain_id    uuid NOT NULL REFERENCES chains (id) ON DELETE CASCADE,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role        text NOT NULL DEFAULT 'member' CHECK (role IN ('member', 'moderator', 'owner')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (chain_id, user_id)
);

CREATE TABLE IF NOT EXISTS projects (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    chain_id    uuid REFERENCES chains (id) ON DELETE SET NULL,
    title       text NOT NULL,
    description text NOT NULL DEFAULT '',
    tags        text[] NOT NULL DEFAULT '{}',
    url         text,
    is_deleted  boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per (user, project): an upvote exists or it does not. Toggling deletes it.
CREATE TABLE IF NOT EXISTS project_upvotes (
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    project_id  uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, project_id)
);

CREATE TABLE IF NOT EXISTS project_comments (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    project_id  uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    body        text NOT NULL,
    is_deleted  boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS chain_posts (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    chain_id    uuid NOT NULL REFERENCES chains (id) ON DELETE CASCADE,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    title       text NOT NULL,
    body        text NOT NULL DEFAULT '',
    is_pinned   boolean NOT NULL DEFAULT false,
    is_deleted  boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS post_upvotes (
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    post_id     uuid NOT NULL REFERENCES chain_posts (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, post_id)
);

CREATE TABLE IF NOT EXISTS post_comments (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    post_id     uuid NOT NULL REFERENCES chain_posts (id) ON DELETE CASCADE,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    body        text NOT NULL,
    is_deleted  boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Direct messages between two users. user1_id < user2_id keeps one
-- conversation per pair.
CREATE TABLE IF NOT EXISTS conversations (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user1_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    user2_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    is_deleted  boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (user1_id < user2_id),
    UNIQUE (user1_id, user2_id)
);

CREATE TABLE IF NOT EXISTS messages (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    conversation_id uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    sender_id       uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    body            text NOT NULL,
    is_read         boolean NOT NULL DEFAULT false,
    is_deleted      boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- An investor profile belongs to a user (role 'investor').
CREATE TABLE IF NOT EXISTS investors (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id         uuid NOT NULL UNIQUE REFERENCES users (id) ON DELETE CASCADE,
    firm_name       text NOT NULL,
    title           text NOT NULL DEFAULT '',
    bio             text NOT NULL DEFAULT '',
    focus_areas     text[] NOT NULL DEFAULT '{}',
    stages          text[] NOT NULL DEFAULT '{}',
    check_size_min  bigint CHECK (check_size_min >= 0),
    check_size_max  bigint CHECK (check_size_max >= check_size_min),
    location        text NOT NULL DEFAULT '',
    is_accepting_intros boolean NOT NULL DEFAULT true,
    is_deleted      boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS intro_requests (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    requester_id  uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    investor_id   uuid NOT NULL REFERENCES investors (id) ON DELETE CASCADE,
    project_id    uuid REFERENCES projects (id) ON DELETE SET NULL,
    message       text NOT NULL DEFAULT '',
    status        text NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'accepted', 'declined', 'withdrawn')),
    is_deleted    boolean NOT NULL DEFAULT false,
    responded_at  timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Indexes every foreign key needs for its ON DELETE action to not scan a table.
-- The read-path indexes are in phase 4 (built CONCURRENTLY).
CREATE INDEX IF NOT EXISTS idx_project_upvotes_project ON project_upvotes (project_id);
CREATE INDEX IF NOT EXISTS idx_project_comments_project ON project_comments (project_id);
CREATE INDEX IF NOT EXISTS idx_chain_members_user ON chain_members (user_id);
CREATE INDEX IF NOT EXISTS idx_chain_posts_chain ON chain_posts (chain_id);
CREATE INDEX IF NOT EXISTS idx_post_upvotes_post ON post_upvotes (post_id);
CREATE INDEX IF NOT EXISTS idx_post_comments_post ON post_comments (post_id);
CREATE INDEX IF NOT EXISTS idx_messages_conversation ON messages (conversation_id, created_at);
CREATE INDEX IF NOT EXISTS idx_intro_requests_investor ON intro_requests (investor_id);
CREATE INDEX IF NOT EXISTS idx_intro_requests_requester ON intro_requests (requester_id);

COMMIT;
