"""The SpeakerDB facade and what it composes: enrollment bookkeeping, AS-norm cohorts,
evaluation, list files. Private modules; the public names are exported by :mod:`speakerdb`."""
