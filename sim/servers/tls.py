"""A test certificate authority for the simulated API v2 devices (HTTPS like the real ones).

Real devices present a certificate signed by HomeWizard's CA whose only name is the common
name ``appliance/<product>/<serial>`` (docs/v2/authorization.mdx); the simulated ones get the
same shape from a CA generated here, so a client is tested exactly as it will talk to a meter:
the CA file given to it is the only thing that differs. Needs ``cryptography`` (the ``sim``
extra, in ``dev`` too): the engine itself never generates certificates.
"""

from __future__ import annotations

import datetime as dt
import ssl
import tempfile
from pathlib import Path

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
except ImportError as exc:  # pragma: no cover - depends on the installation
    msg = "the simulated API v2 needs 'cryptography': pip install 'mmbc[sim]'"
    raise ImportError(msg) from exc

CA_NAME = "MMBC simulator Appliance Access CA"
_VALID = dt.timedelta(days=3650)
_BACKDATE = dt.timedelta(days=1)  # a skewed client clock still accepts a fresh certificate


def _usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


class SimulatorCA:
    """A CA made on the spot; ``issue`` signs device certificates, ``ca_pem`` is for clients."""

    def __init__(self) -> None:
        now = dt.datetime.now(dt.UTC)  # certificate validity is wall-clock by definition
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "MMBC simulator"),
                x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME),
            ]
        )
        public = self._key.public_key()
        self._certificate = (
            x509.CertificateBuilder()
            .subject_name(self._name)
            .issuer_name(self._name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + _VALID)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_usage(cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self._key, hashes.SHA256())
        )

    @property
    def ca_pem(self) -> bytes:
        return self._certificate.public_bytes(serialization.Encoding.PEM)

    def write_ca(self, path: Path) -> Path:
        """Write the CA certificate (public, no key) to ``path`` for clients to trust."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.ca_pem)
        return path

    def issue(self, identifier: str) -> tuple[bytes, bytes]:
        """A device certificate + key (PEM) naming ``identifier`` in its common name only."""
        now = dt.datetime.now(dt.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identifier)]))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + _VALID)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return certificate.public_bytes(serialization.Encoding.PEM), key_pem

    def server_context(self, identifier: str) -> ssl.SSLContext:
        """A server-side SSL context presenting a fresh certificate for ``identifier``."""
        cert_pem, key_pem = self.issue(identifier)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        # load_cert_chain reads files only; they live just long enough to be read.
        with tempfile.TemporaryDirectory(prefix="mmbc-sim-tls-") as directory:
            cert_file = Path(directory) / "device.pem"
            key_file = Path(directory) / "device.key"
            cert_file.write_bytes(cert_pem)
            key_file.write_bytes(key_pem)
            key_file.chmod(0o600)
            context.load_cert_chain(cert_file, key_file)
        return context
