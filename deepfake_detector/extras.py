"""Optional dependencies (the [app] extra's Streamlit, the [faces] extra's dlib): the one error a
missing one raises, so the command line prints one line for any of them. No imports: any module
may raise it without pulling in another."""


class MissingExtraError(RuntimeError):
    """An optional dependency is not installed; the message names the extra to install."""
