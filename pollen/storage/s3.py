"""Copies in S3-compatible storage (``POLLEN_STORAGE__URL=s3://bucket/prefix``), via boto3.

boto3 is AWS's own SDK, maintained with the service, and speaks to any S3-compatible store
(MinIO, Cloudflare R2, Ceph...) through ``POLLEN_STORAGE__S3_ENDPOINT_URL``; it is the
``storage`` extra (``pip install 'pollen-jobs[storage]'``), not a producer dependency. One client
per worker process; the upload is boto3's managed transfer (multipart for large files).
"""

from __future__ import annotations

from typing import IO, Any
from urllib.parse import quote, urlsplit

from pollen.errors import CopyUnavailable
from pollen.install import pip_install
from pollen.settings import StorageSettings
from pollen.storage import public


class S3Storage:
    """A bucket and key prefix; the stored URL is ``public_url`` + key, else the object's
    address at the endpoint (path style) or on AWS."""

    def __init__(
        self, client: Any, bucket: str, prefix: str = "", *, base_url: str, public_url: str | None
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.base_url = base_url
        self.public_url = public_url

    @classmethod
    def from_settings(cls, settings: StorageSettings) -> S3Storage:
        try:
            import boto3
            from botocore.config import Config
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError(
                "POLLEN_STORAGE__URL is s3://… but boto3 is not installed: "
                + pip_install("storage")
            ) from exc
        parts = urlsplit(settings.url or "")
        key_id, secret = settings.s3_access_key_id, settings.s3_secret_access_key
        client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            aws_access_key_id=key_id.get_secret_value() if key_id else None,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            # pollen retries a failed copy on its own schedule: one quick retry here at most
            config=Config(
                retries={"max_attempts": 2, "mode": "standard"},
                connect_timeout=10,
                read_timeout=settings.timeout,
            ),
        )
        if settings.s3_endpoint_url:
            base = f"{settings.s3_endpoint_url.rstrip('/')}/{parts.netloc}"
        else:
            base = f"https://{parts.netloc}.s3.{settings.s3_region or 'us-east-1'}.amazonaws.com"
        return cls(client, parts.netloc, parts.path, base_url=base, public_url=settings.public_url)

    def put(self, key: str, data: IO[bytes], *, size: int, content_type: str) -> str:
        del size  # the managed transfer reads the file to its end
        name = f"{self.prefix}/{key}" if self.prefix else key
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.upload_fileobj(
                data, self.bucket, name, ExtraArgs={"ContentType": content_type}
            )
        except (BotoCoreError, ClientError) as exc:
            raise CopyUnavailable(f"storage s3://{self.bucket} refused the upload: {exc}") from exc
        if self.public_url:
            return public(self.public_url, name)
        return f"{self.base_url}/{quote(name)}"
