"""The OHIF Viewer's static build served on 127.0.0.1, with Orthanc's DICOMweb behind the same origin.

A same-origin proxy (/dicom-web/ -> Orthanc) is how OHIF is deployed in front of a PACS: the
browser needs no CORS and the app-config names a relative DICOMweb root.
"""

from __future__ import annotations

import http.server
import json
import mimetypes
import threading
import urllib.error
import urllib.request
from pathlib import Path

VIEWER_DIR = Path(__file__).resolve().parent / "viewer"
OHIF_DIST = VIEWER_DIR / "ohif" / "dist"


def app_config(friendly_name: str = "iodine-node test PACS (Orthanc)") -> str:
    """OHIF app-config with one DICOMweb data source on this origin (/dicom-web)."""
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "orthanc",
        "configuration": {
            "friendlyName": friendly_name, "name": "orthanc",
            "wadoUriRoot": "/dicom-web", "qidoRoot": "/dicom-web", "wadoRoot": "/dicom-web",
            "qidoSupportsIncludeField": False, "supportsReject": False, "imageRendering": "wadors",
            "thumbnailRendering": "wadors", "enableStudyLazyLoad": True, "supportsFuzzyMatching": False,
            "supportsWildcard": True, "dicomUploadEnabled": False, "omitQuotationForMultipartRequest": True,
            "bulkDataURI": {"enabled": True},
        },
    }
    config = {
        "routerBasename": "/", "showStudyList": True, "extensions": [], "modes": [],
        "maxNumberOfWebWorkers": 1, "showWarningMessageForCrossOrigin": False, "showCPUFallbackMessage": False,
        "showLoadingIndicator": True, "investigationalUseDialog": {"option": "never"},
        "defaultDataSourceName": "orthanc", "dataSources": [source],
    }
    return f"window.config = {json.dumps(config, indent=1)};\n"


class ViewerServer:
    """ThreadingHTTPServer on a free loopback port: OHIF's files, app-config.js, /dicom-web proxy."""

    def __init__(self, orthanc_url: str, dist: Path = OHIF_DIST) -> None:
        if not (dist / "index.html").is_file():
            raise FileNotFoundError(f"{dist}/index.html missing: run `make viewer` (npm @ohif/app build)")
        self.dist = dist.resolve()
        self.orthanc_url = orthanc_url.rstrip("/")
        config = app_config().encode()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet: the browser script reports failures
                pass

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                # Cross-origin isolation lets Cornerstone use SharedArrayBuffer (all resources are same-origin).
                self.send_header("Cross-Origin-Opener-Policy", "same-origin")
                self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path.startswith("/dicom-web/"):
                    self._proxy()
                elif path == "/app-config.js":
                    self._send(200, config, "application/javascript")
                else:
                    target = (server.dist / path.lstrip("/")).resolve()
                    if not target.is_relative_to(server.dist) or not target.is_file():
                        target = server.dist / "index.html"  # single-page app: routes are the app's
                    kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
                    if target.suffix == ".wasm":
                        kind = "application/wasm"
                    self._send(200, target.read_bytes(), kind)

            def _proxy(self) -> None:
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "content-type")}
                headers["Host"] = self.headers.get("Host", "")  # Orthanc builds retrieve URLs on this origin
                request = urllib.request.Request(server.orthanc_url + self.path, headers=headers)
                try:
                    with urllib.request.urlopen(request, timeout=120) as r:
                        self._send(r.status, r.read(), r.headers.get("Content-Type", "application/octet-stream"))
                except urllib.error.HTTPError as exc:
                    self._send(exc.code, exc.read(), exc.headers.get("Content-Type", "text/plain"))

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="ohif-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ViewerServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
