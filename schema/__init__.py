"""SQL migrations, the migration runner, database access and the data generator."""
