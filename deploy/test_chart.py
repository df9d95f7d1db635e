"""Assertions on the chart as the real Helm engine renders it with the ci/
values files: ports, volumes, security, GPU, TLS, keys, monitoring, and
values the schema must refuse. Run by scripts/deploy-check.sh."""

import copy
import tomllib
import unittest

import helm_python as helm
import kubernetes_validate

import check_chart


def rendered(values):
    """{kind/name: object} of a render, and the server config it carries."""
    objs = {}
    for template, text in check_chart.render(values).items():
        if template.endswith("NOTES.txt"):
            continue
        for doc in check_chart.yaml.safe_load_all(text):
            if doc:
                objs[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    cm = next(o for k, o in objs.items() if k.startswith("ConfigMap/"))
    return objs, tomllib.loads(cm["data"]["lookalike.toml"])


def ci(name):
    return check_chart.load_values(check_chart.CHART / "ci" / f"{name}-values.yaml")


def port_of(address):
    return int(address.rsplit(":", 1)[1])


def one(objs, kind):
    found = [o for k, o in objs.items() if k.startswith(kind + "/")]
    assert len(found) == 1, f"{kind}: {list(objs)}"
    return found[0]


def server(objs):
    return one(objs, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]


class Rendered(unittest.TestCase):
    def test_one_pod_with_its_volume_claim(self):
        objs, _ = rendered(ci("default"))
        sts = one(objs, "StatefulSet")
        self.assertEqual(sts["spec"]["replicas"], 1)
        self.assertEqual(sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"], "data")
        self.assertIn("Service/" + sts["spec"]["serviceName"], objs)
        labels = sts["spec"]["template"]["metadata"]["labels"]
        for key in ("Service/lookalike", "PodDisruptionBudget/lookalike"):
            sel = objs[key]["spec"].get("selector", {})
            sel = sel.get("matchLabels", sel)
            self.assertTrue(sel and all(labels.get(k) == v for k, v in sel.items()), key)

    def test_grpc_probes_on_the_configured_numeric_port(self):
        for name in ("default", "gpu", "monitoring"):
            objs, cfg = rendered(ci(name))
            c = server(objs)
            grpc = port_of(cfg["listen"])
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                p = c[probe]["grpc"]
                self.assertIsInstance(p["port"], int, f"{name} {probe}")
                self.assertEqual(p["port"], grpc, f"{name} {probe}")
                self.assertEqual(p["service"], "lookalike.v1.Retrieval")
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            want = {"grpc": grpc, "admin": port_of(cfg["admin_listen"])}
            if "http_listen" in cfg:
                want["http"] = port_of(cfg["http_listen"])
            self.assertEqual(ports, want)
            svc = {p["name"]: p["port"] for p in objs["Service/lookalike"]["spec"]["ports"]}
            self.assertEqual(svc, ports)

    def test_tls_probes_use_http_health_on_the_admin_port(self):
        objs, cfg = rendered(ci("tls-auth"))
        c = server(objs)
        self.assertEqual(port_of(cfg["listen"]), 8443)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            self.assertNotIn("grpc", c[probe])
            self.assertEqual(c[probe]["httpGet"], {"path": "/healthz", "port": port_of(cfg["admin_listen"])})

    def test_data_volume_mounted_where_the_config_puts_data_dir(self):
        for name in ("default", "tls-auth"):
            objs, cfg = rendered(ci(name))
            mounts = {m["name"]: m["mountPath"] for m in server(objs)["volumeMounts"]}
            self.assertEqual(mounts["data"], cfg["data_dir"], name)
        self.assertEqual(cfg["data_dir"], "/var/lib/lookalike")

    def test_the_server_reads_the_mounted_config(self):
        objs, _ = rendered(ci("default"))
        c = server(objs)
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        self.assertEqual(c["args"], ["--config", mounts["config"] + "/lookalike.toml"])

    def test_restricted_security_context(self):
        for name in ("default", "gpu", "tls-auth"):
            objs, _ = rendered(ci(name))
            pods = [one(objs, "StatefulSet")["spec"]["template"]["spec"], one(objs, "Pod")["spec"]]
            for pod in pods:
                self.assertTrue(pod["securityContext"]["runAsNonRoot"])
                self.assertEqual(pod["securityContext"]["seccompProfile"], {"type": "RuntimeDefault"})
                for c in pod["containers"]:
                    sc = c["securityContext"]
                    self.assertTrue(sc["readOnlyRootFilesystem"])
                    self.assertFalse(sc["allowPrivilegeEscalation"])
                    self.assertEqual(sc["capabilities"], {"drop": ["ALL"]})

    def test_gpu_request_only_with_gpu_values(self):
        for name in ("default", "tls-auth", "monitoring"):
            objs, cfg = rendered(ci(name))
            self.assertNotIn("nvidia.com/gpu", str(objs), name)
            self.assertNotEqual(cfg.get("embed", {}).get("provider"), "cuda")
            self.assertTrue(server(objs)["image"].endswith("-cpu"))
        objs, cfg = rendered(ci("gpu"))
        c = server(objs)
        self.assertEqual(c["resources"]["limits"]["nvidia.com/gpu"], 1)
        self.assertEqual(cfg["embed"], {"provider": "cuda", "require_gpu": True})
        self.assertTrue(c["image"].endswith("-cuda"))
        pod = one(objs, "StatefulSet")["spec"]["template"]["spec"]
        self.assertEqual(pod["nodeSelector"], {"nvidia.com/gpu.present": "true"})
        self.assertEqual(pod["tolerations"][0]["key"], "nvidia.com/gpu")

    def test_tls_and_api_key_secrets_wired(self):
        objs, cfg = rendered(ci("tls-auth"))
        c = server(objs)
        pod = one(objs, "StatefulSet")["spec"]["template"]["spec"]
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        self.assertEqual(volumes["tls"]["secret"]["secretName"], "lookalike-tls")
        self.assertEqual(cfg["tls"]["cert"], mounts["tls"] + "/tls.crt")
        self.assertEqual(cfg["tls"]["key"], mounts["tls"] + "/tls.key")
        self.assertEqual(cfg["tls"]["client_ca"], mounts["tls"] + "/ca.crt")
        secret = one(objs, "Secret")
        self.assertEqual(volumes["api-keys"]["secret"]["secretName"], secret["metadata"]["name"])
        self.assertEqual(cfg["auth"]["keys_dir"], mounts["api-keys"])
        self.assertEqual(sorted(secret["data"]), ["read-only", "read-write", "read-write-next"])
        test_env = {e["name"]: e for e in one(objs, "Pod")["spec"]["containers"][0]["env"]}
        self.assertEqual(test_env["LOOKALIKE_API_KEY"]["valueFrom"]["secretKeyRef"]["name"], secret["metadata"]["name"])
        self.assertTrue(test_env["LOOKALIKE_SERVER"]["value"].startswith("https://"))

    def test_pods_roll_when_the_keys_change(self):
        def checksum(values):
            objs, _ = rendered(values)
            return one(objs, "StatefulSet")["spec"]["template"]["metadata"]["annotations"]["checksum/api-keys"]

        values = ci("tls-auth")
        rotated = copy.deepcopy(values)
        rotated["apiKeys"]["readWrite"] = "another-key"
        self.assertNotEqual(checksum(values), checksum(rotated))
        existing = copy.deepcopy(values)
        existing["apiKeys"] = {"enabled": True, "existingSecret": "keys-v2"}
        objs, cfg = rendered(existing)
        self.assertFalse([k for k in objs if k.startswith("Secret/")])
        volumes = {v["name"]: v for v in one(objs, "StatefulSet")["spec"]["template"]["spec"]["volumes"]}
        self.assertEqual(volumes["api-keys"]["secret"]["secretName"], "keys-v2")
        # Rendered without a cluster the Secret's data is unseen: the
        # revision value rolls the pods, and so does another Secret.
        bumped = copy.deepcopy(existing)
        bumped["apiKeys"]["existingSecretRevision"] = "2"
        other = copy.deepcopy(existing)
        other["apiKeys"]["existingSecret"] = "keys-v3"
        sums = {checksum(existing), checksum(bumped), checksum(other)}
        self.assertEqual(len(sums), 3)
        self.assertEqual(checksum(existing), checksum(copy.deepcopy(existing)))

    def test_no_keys_no_tls_by_default(self):
        objs, cfg = rendered(ci("default"))
        self.assertNotIn("auth", cfg)
        self.assertNotIn("tls", cfg)
        self.assertFalse([k for k in objs if k.startswith("Secret/")])

    def test_service_monitor_scrapes_the_admin_port(self):
        objs, _ = rendered(ci("default"))
        self.assertFalse([k for k in objs if k.startswith("ServiceMonitor/")])
        objs, _ = rendered(ci("monitoring"))
        sm = one(objs, "ServiceMonitor")
        self.assertEqual(sm["metadata"]["labels"]["release"], "prometheus")
        self.assertEqual(sm["spec"]["endpoints"][0]["port"], "admin")
        self.assertEqual(sm["spec"]["endpoints"][0]["path"], "/metrics")
        svc = objs["Service/lookalike"]
        self.assertIn("admin", [p["name"] for p in svc["spec"]["ports"]])
        labels = svc["metadata"]["labels"]
        self.assertTrue(all(labels.get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items()))

    def test_http_api_port_only_when_the_config_listens(self):
        for name in ("default", "gpu", "tls-auth"):
            objs, cfg = rendered(ci(name))
            self.assertNotIn("http_listen", cfg)
            self.assertNotIn("http", [p["name"] for p in server(objs)["ports"]])
            self.assertNotIn("http", [p["name"] for p in objs["Service/lookalike"]["spec"]["ports"]])
        objs, cfg = rendered(ci("monitoring"))
        port = port_of(cfg["http_listen"])
        ports = {p["name"]: p for p in server(objs)["ports"]}
        self.assertEqual(ports["http"]["containerPort"], port)
        svc = {p["name"]: p for p in objs["Service/lookalike"]["spec"]["ports"]}
        self.assertEqual((svc["http"]["port"], svc["http"]["targetPort"]), (port, "http"))
        self.assertEqual(svc["http"]["appProtocol"], "http")

    def test_helm_test_pod_checks_health_and_lists_galleries(self):
        objs, _ = rendered(ci("default"))
        pod = one(objs, "Pod")
        self.assertEqual(pod["metadata"]["annotations"]["helm.sh/hook"], "test")
        script = pod["spec"]["containers"][0]["command"][-1]
        self.assertIn("lookalike health", script)
        self.assertIn("lookalike stats", script)
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        self.assertEqual(env["LOOKALIKE_SERVER"], "http://lookalike.search.svc:50051")


class Refused(unittest.TestCase):
    def assert_refused(self, values, error=helm.HelmValuesError):
        with self.assertRaises(error):
            check_chart.render(values)

    def test_values_breaking_the_schema_fail_to_render(self):
        self.assert_refused({"replicas": 2})
        self.assert_refused({"gpu": {"count": "one"}})
        self.assert_refused({"gpu": {"enabled": "yes"}})
        self.assert_refused({"config": {"listen": "0.0.0.0"}})
        self.assert_refused({"config": {"admin_listen": "0.0.0.0:70000"}})
        self.assert_refused({"config": {"data_dir": "relative/data"}})
        self.assert_refused({"config": {"tls": {"cert": "x"}}})
        self.assert_refused({"tls": {"enabled": True}})
        self.assert_refused({"persistence": {"size": "lots"}})
        self.assert_refused({"surprise": True})

    def test_inconsistent_values_fail_in_templates(self):
        self.assert_refused({"terminationGracePeriodSeconds": 10}, helm.HelmRenderError)
        self.assert_refused({"apiKeys": {"enabled": True}}, helm.HelmRenderError)

    def test_kubernetes_schemas_are_strict(self):
        objs, _ = rendered(ci("default"))
        sts = copy.deepcopy(one(objs, "StatefulSet"))
        kubernetes_validate.validate(sts, "1.27.0", strict=True)
        sts["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpcPort"] = 1
        with self.assertRaises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(sts, "1.27.0", strict=True)


if __name__ == "__main__":
    unittest.main()
