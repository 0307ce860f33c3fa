"""Front-end detection: widgets only where a live front end can show them."""
from moescope import frontend


def test_no_frontend_outside_a_kernel_or_when_marked_headless(monkeypatch):
    monkeypatch.delenv(frontend.HEADLESS, raising=False)
    assert not frontend.has_frontend()  # pytest is no Jupyter kernel

    class Shell:
        kernel = object()

    monkeypatch.setattr("IPython.get_ipython", lambda: Shell())
    assert frontend.has_frontend()
    monkeypatch.setenv(frontend.HEADLESS, "1")
    assert not frontend.has_frontend()
