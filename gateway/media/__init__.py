"""A call's live audio session: provider socket, codecs, agent socket."""
