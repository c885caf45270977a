"""TLS for HomeWizard's API v2: the bundled HomeWizard CA, the device hostname, the SSL context.

The devices present a certificate signed by HomeWizard's "Appliance Access CA" whose common
name is ``appliance/<certificate product>/<serial>`` (no subject alternative name), so the
hostname check must accept the common name (docs/v2/authorization.mdx, "SSL Certificate
Validation"). ``homewizard-ca-cert.pem`` beside this module is that CA certificate, which
HomeWizard publishes with its API documentation (``/homewizard-ca-cert.pem`` there, the docs
repository's ``static/homewizard-ca-cert.pem``); the PEM text was copied from HomeWizard's own
client, python-homewizard-energy 10.2.0 (``homewizard_energy/v2/cacert.py``, Apache-2.0):
C=NL, ST=ZH, O=HomeWizard, CN=Appliance Access CA, an X.509 version 1 certificate valid
2021-12-18 to 2031-12-16, SHA-256 fingerprint 4E:C2:77:E6:20:33:FA:E8:...:AC:68:00:03.
"""

from __future__ import annotations

import ssl
from importlib import resources
from pathlib import Path

CA_RESOURCE = "homewizard-ca-cert.pem"

# The product name in the certificate differs from the API's product_type "for legacy reasons"
# (docs/v2/authorization.mdx, "Hostname Validation").
CERTIFICATE_PRODUCTS: dict[str, str] = {
    "HWE-P1": "p1dongle",
    "HWE-SKT": "energysocket",
    "HWE-DSP": "display",
    "HWE-KWH1": "energymeter",
    "HWE-KWH3": "energymeter",
    "SDM230-wifi": "energymeter",
    "SDM630-wifi": "energymeter",
    "HWE-WTR": "watermeter",
    "HWE-BAT": "battery",
}


def homewizard_ca_pem() -> str:
    """HomeWizard's CA certificate (PEM) as bundled with this package."""
    return resources.files(__package__).joinpath(CA_RESOURCE).read_text(encoding="ascii")


def verification_hostname(product_type: str, serial: str) -> str:
    """The name the device's certificate carries: ``appliance/p1dongle/3c39e7aabbcc``.

    Raises ValueError for a product type HomeWizard has not published a certificate name for.
    """
    product = CERTIFICATE_PRODUCTS.get(product_type)
    if product is None:
        msg = (
            f"no certificate name known for product type {product_type!r}; "
            f"known: {', '.join(sorted(CERTIFICATE_PRODUCTS))}"
        )
        raise ValueError(msg)
    if not serial or not serial.isalnum():
        msg = f"serial {serial!r} is not the device's 12 hexadecimal digits"
        raise ValueError(msg)
    return f"appliance/{product}/{serial.lower()}"


def client_ssl_context(ca_file: str | Path | None = None) -> ssl.SSLContext:
    """Verify the device against HomeWizard's CA only (or ``ca_file``), hostname included.

    Only that CA is trusted: the system's public CAs have no business vouching for a device on
    the LAN (and loading them is slow). X.509 strict mode is cleared because HomeWizard's CA is
    a version 1 certificate without extensions, which strict mode rejects (Python 3.13's
    default context sets it).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname + CERT_REQUIRED
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_flags &= ~ssl.VERIFY_X509_STRICT
    # The devices' certificates name themselves in the common name only.
    context.hostname_checks_common_name = True
    if ca_file is None:
        context.load_verify_locations(cadata=homewizard_ca_pem())
    else:
        context.load_verify_locations(cafile=str(ca_file))
    return context


def common_name_of(peer_certificate: dict[str, object] | None) -> str | None:
    """The subject common name from ``SSLSocket.getpeercert()``'s dict, if any."""
    if not peer_certificate:
        return None
    subject = peer_certificate.get("subject")
    if not isinstance(subject, tuple):
        return None
    for rdn in subject:
        for attribute in rdn:
            if isinstance(attribute, tuple) and attribute[:1] == ("commonName",):
                return str(attribute[1])
    return None
