"""Storage layer: SQL schema and engines, migrations, the FAISS vector index and its cache
file, the store that keeps both in step. Never imports torch. Private modules; the public
names are exported by :mod:`speakerdb`."""
