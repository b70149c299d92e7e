"""`fuseface serve`: the HTTP service over a gallery (see :mod:`fuseface.serve.app`)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from fuseface.cli.options import model_option


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    @app.command("serve")
    def serve(
        gallery: Path | None = typer.Option(None, help="Gallery directory (without one: /compare and /embed only)."),
        model: str | None = model_option(None, "default: the gallery's"),
        host: str = typer.Option("127.0.0.1", help="Address to bind (127.0.0.1: this machine only)."),
        port: int = typer.Option(8000, help="Port."),
        api_key_file: Path | None = typer.Option(
            None, help="File holding the API key for changing requests (else the FUSEFACE_API_KEY variable)."
        ),
        max_body_mb: float = typer.Option(20.0, help="Largest request body, MiB (413 above)."),
        max_side: int = typer.Option(4096, help="Largest image side in pixels (400 above)."),
        max_batch: int = typer.Option(32, help="Most images per model call."),
        max_wait_ms: float = typer.Option(5.0, help="How long the batching queue waits for more requests."),
    ) -> None:
        """Serve compare / embed / enroll / search / delete over HTTP (OpenAPI docs at /docs).

        \b
        Example: fuseface serve --gallery my_gallery --port 8000
        """
        import uvicorn

        from fuseface.errors import ConfigError
        from fuseface.gallery import Gallery
        from fuseface.serve.app import ServeSettings, create_app

        key = os.environ.get("FUSEFACE_API_KEY") or None
        if api_key_file is not None:
            if not api_key_file.is_file():
                raise ConfigError(f"--api-key-file {api_key_file}: file not found")
            key = api_key_file.read_text().strip() or None
        if gallery is not None:
            g = Gallery.open(gallery, model, stored_model=True)
            fm = g.model
        elif model is not None:
            import fuseface

            g, fm = None, fuseface.load(model)
        else:
            raise ConfigError("give --gallery DIR or --model MODEL")
        settings = ServeSettings(
            api_key=key,
            max_body_bytes=int(max_body_mb * 1024 * 1024),
            max_side=max_side,
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
        )
        if key is None:
            typer.secho("no API key: /enroll and DELETE are refused (403)", fg=typer.colors.YELLOW, err=True)
        try:
            uvicorn.run(create_app(fm, g, settings), host=host, port=port, log_level="warning")
        finally:
            if g is not None:
                g.close()
