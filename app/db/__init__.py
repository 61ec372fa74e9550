"""The database: engine, the statement runner, the one access object services get, migrations."""
