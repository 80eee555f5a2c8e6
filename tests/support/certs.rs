//! The test apiserver's certificates (made with `openssl`) and its admin kubeconfig.

use std::path::Path;

use super::process::run;

/// The DER bytes of a PEM certificate.
pub(super) fn pem_to_der(pem: &str) -> Vec<u8> {
    use base64::Engine;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("PEM body is base64")
}

/// A CA, a serving certificate for 127.0.0.1/localhost, an admin client certificate and a
/// ServiceAccount signing key, all ECDSA P-256 (fast to generate).
pub(super) fn make_certs(dir: &Path) {
    let p = |f: &str| dir.join(f).display().to_string();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    let (ca_key, ca_crt) = (p("ca.key"), p("ca.crt"));
    args.extend([
        "-keyout",
        &ca_key,
        "-out",
        &ca_crt,
        "-subj",
        "/CN=kiln-test-ca",
        "-days",
        "2",
    ]);
    run("openssl", &args);

    let sign = |name: &str, subj: &str, ext: &str| {
        let (key, csr, crt, extfile) = (
            p(&format!("{name}.key")),
            p(&format!("{name}.csr")),
            p(&format!("{name}.crt")),
            p(&format!("{name}.ext")),
        );
        std::fs::write(&extfile, ext).expect("write ext file");
        let mut args = vec!["req"];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &csr, "-subj", subj]);
        run("openssl", &args);
        run(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_crt,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "2",
                "-extfile",
                &extfile,
            ],
        );
    };
    sign(
        "server",
        "/CN=kube-apiserver",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    );
    sign(
        "admin",
        "/O=system:masters/CN=kiln-admin",
        "extendedKeyUsage=clientAuth\n",
    );
    run(
        "openssl",
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            &p("sa.key"),
        ],
    );
    run("openssl", &["ec", "-in", &p("sa.key"), "-pubout", "-out", &p("sa.pub")]);
}

pub(super) fn write_kubeconfig(dir: &Path, url: &str, ca_pem: &str) {
    use base64::Engine;
    let b64 = |f: &str| {
        let text = if f == "ca.crt" {
            ca_pem.to_owned()
        } else {
            std::fs::read_to_string(dir.join(f)).expect("cert file")
        };
        base64::engine::general_purpose::STANDARD.encode(text)
    };
    let kubeconfig = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: kiln-test
  cluster:
    server: {url}
    certificate-authority-data: {ca}
users:
- name: admin
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: kiln-test
  context:
    cluster: kiln-test
    user: admin
    namespace: default
current-context: kiln-test
",
        ca = b64("ca.crt"),
        cert = b64("admin.crt"),
        key = b64("admin.key"),
    );
    std::fs::write(dir.join("kubeconfig"), kubeconfig).expect("write kubeconfig");
}
