"""Assertions on the chart as the real Helm engine renders it with the ci/
values files: ports, volumes, security, GPU, TLS, keys, monitoring, the
admin Service, NetworkPolicy, Ingress, escape hatches, and replicas
through NATS JetStream (cluster, PDB, HPA), values the schema must refuse;
and on the Dockerfile's health check and labels. Run by
scripts/deploy-check.sh."""

import copy
import pathlib
import posixpath
import re
import shutil
import tempfile
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


def pod_spec(objs):
    return one(objs, "StatefulSet")["spec"]["template"]["spec"]


def annotations(objs):
    return one(objs, "StatefulSet")["spec"]["template"]["metadata"].get("annotations", {})


def selects(selector, labels):
    """Whether a matchLabels selector (or a Service's selector map) picks labels."""
    sel = selector.get("matchLabels", selector)
    return bool(sel) and all(labels.get(k) == v for k, v in sel.items())


def with_values(name, **changes):
    """ci values `name` with top-level keys replaced (deep copies)."""
    values = copy.deepcopy(ci(name))
    values.update(copy.deepcopy(changes))
    return values


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
        for name in ("default", "gpu", "monitoring", "escape-hatches"):
            objs, cfg = rendered(ci(name))
            c = server(objs)
            grpc = port_of(cfg["listen"])
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                p = c[probe]["grpc"]
                self.assertIsInstance(p["port"], int, f"{name} {probe}")
                self.assertEqual(p["port"], grpc, f"{name} {probe}")
                # Readiness asks for the API (false while a replica
                # catches up); startup and liveness for the process only.
                if probe == "readinessProbe":
                    self.assertEqual(p["service"], "lookalike.v1.Retrieval")
                else:
                    self.assertNotIn("service", p)
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            want = {"grpc": grpc, "admin": port_of(cfg["admin_listen"])}
            if "http_listen" in cfg:
                want["http"] = port_of(cfg["http_listen"])
            self.assertEqual(ports, want)
            svc = {p["name"]: p["port"] for p in objs["Service/lookalike"]["spec"]["ports"]}
            self.assertEqual(svc, {k: v for k, v in ports.items() if k != "admin"})
            admin = {p["name"]: p["port"] for p in objs["Service/lookalike-admin"]["spec"]["ports"]}
            self.assertEqual(admin, {"admin": ports["admin"]})

    def test_tls_probes_use_http_health_on_the_admin_port(self):
        objs, cfg = rendered(ci("tls-auth"))
        c = server(objs)
        self.assertEqual(port_of(cfg["listen"]), 8443)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            self.assertNotIn("grpc", c[probe])
            path = "/healthz" if probe == "readinessProbe" else "/livez"
            self.assertEqual(c[probe]["httpGet"], {"path": path, "port": port_of(cfg["admin_listen"])})

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
        for name in ("default", "gpu", "tls-auth", "hardened"):
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
        admin = objs["Service/lookalike-admin"]
        self.assertIn("admin", [p["name"] for p in admin["spec"]["ports"]])
        self.assertTrue(selects(sm["spec"]["selector"], admin["metadata"]["labels"]))
        # Not the API Service, which has no admin port.
        self.assertFalse(selects(sm["spec"]["selector"], objs["Service/lookalike"]["metadata"]["labels"]))

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

    def test_pods_roll_when_the_config_changes(self):
        def checksum(values):
            objs, _ = rendered(values)
            return annotations(objs).get("checksum/config")

        base = checksum(ci("default"))
        self.assertRegex(base or "", r"^[0-9a-f]{64}$")
        self.assertEqual(base, checksum(ci("default")))
        changed = with_values("default", config={**ci("default").get("config", {}), "log_format": "human"})
        self.assertNotEqual(base, checksum(changed))
        # Only the config: other values leave it be.
        self.assertEqual(base, checksum(with_values("default", podLabels={"team": "search"})))
        # The config the chart derives (GPU provider) counts too.
        self.assertNotEqual(base, checksum(with_values("default", gpu={"enabled": True})))

    def test_default_disruption_budget_lets_drains_proceed(self):
        objs, _ = rendered(ci("default"))
        pdb = one(objs, "PodDisruptionBudget")
        self.assertEqual(set(pdb["spec"]), {"maxUnavailable", "selector"})
        self.assertEqual(pdb["spec"]["maxUnavailable"], 1)
        self.assertTrue(selects(pdb["spec"]["selector"], one(objs, "StatefulSet")["spec"]["template"]["metadata"]["labels"]))
        objs, _ = rendered(with_values("default", podDisruptionBudget={"enabled": False}))
        self.assertFalse([k for k in objs if k.startswith("PodDisruptionBudget/")])

    def test_admin_port_on_its_own_cluster_ip_service(self):
        cases = [("default", "ClusterIP"), ("hardened", "LoadBalancer"),
                 ("monitoring", "ClusterIP")]
        cases.append(("nodeport", "NodePort"))
        for name, api_type in cases:
            values = with_values("default", service={"type": "NodePort"}) if name == "nodeport" else ci(name)
            objs, cfg = rendered(values)
            labels = one(objs, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
            api, admin = objs["Service/lookalike"], objs["Service/lookalike-admin"]
            self.assertEqual(api["spec"]["type"], api_type, name)
            self.assertNotIn("admin", [p["name"] for p in api["spec"]["ports"]], name)
            self.assertNotIn(port_of(cfg["admin_listen"]), [p["port"] for p in api["spec"]["ports"]], name)
            self.assertEqual(admin["spec"]["type"], "ClusterIP", name)
            self.assertEqual(admin["spec"]["ports"], [{
                "name": "admin", "port": port_of(cfg["admin_listen"]), "targetPort": "admin",
                "protocol": "TCP", "appProtocol": "http"}], name)
            self.assertTrue(selects(admin["spec"]["selector"], labels), name)
            # The governing Service (headless) carries gRPC only, too.
            headless = objs["Service/lookalike-headless"]["spec"]["ports"]
            self.assertEqual([p["name"] for p in headless], ["grpc"], name)
        objs, _ = rendered(ci("hardened"))
        self.assertEqual(objs["Service/lookalike"]["metadata"]["annotations"],
                         ci("hardened")["service"]["annotations"])
        self.assertEqual(objs["Service/lookalike-admin"]["metadata"]["annotations"], {"prometheus.io/scrape": "true"})

    def test_network_policy_only_when_enabled_admin_port_restricted(self):
        for name in ("default", "tls-auth", "escape-hatches"):
            objs, _ = rendered(ci(name))
            self.assertFalse([k for k in objs if k.startswith("NetworkPolicy/")], name)
        values = ci("hardened")
        objs, cfg = rendered(values)
        np = one(objs, "NetworkPolicy")
        pod_labels = one(objs, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
        test_labels = one(objs, "Pod")["metadata"]["labels"]
        self.assertTrue(selects(np["spec"]["podSelector"], pod_labels))
        self.assertEqual(np["spec"]["policyTypes"], ["Ingress"])
        grpc, admin, http = (port_of(cfg[k]) for k in ("listen", "admin_listen", "http_listen"))
        rules = {tuple(sorted(p["port"] for p in r["ports"])): r for r in np["spec"]["ingress"]}
        self.assertEqual(set(rules), {tuple(sorted((grpc, http))), (admin,)})
        for r in np["spec"]["ingress"]:
            self.assertTrue(r.get("ports"), "a rule without ports opens every port")
            self.assertTrue(r.get("from"), "a rule without peers admits any source")
        self.assertEqual(rules[(admin,)]["from"], values["networkPolicy"]["adminFrom"])
        api_from = rules[tuple(sorted((grpc, http)))]["from"]
        self.assertEqual(api_from[:-1], values["networkPolicy"]["apiFrom"])
        # The helm test pod reaches the API, and the peer admitting it is
        # not one the server pod's labels satisfy.
        self.assertTrue(selects(api_from[-1]["podSelector"], test_labels))
        self.assertFalse(selects(api_from[-1]["podSelector"], pod_labels))
        self.assertEqual(set(api_from[-1]), {"podSelector"})

        # adminFrom [] admits no pod to the admin port: no rule names it.
        closed = copy.deepcopy(values)
        closed["networkPolicy"]["adminFrom"] = []
        objs, _ = rendered(closed)
        ingress = one(objs, "NetworkPolicy")["spec"]["ingress"]
        self.assertNotIn(admin, [p["port"] for r in ingress for p in r["ports"]])
        # apiFrom [] admits any source to the API ports, still not to admin.
        anyone = copy.deepcopy(values)
        anyone["networkPolicy"]["apiFrom"] = []
        objs, _ = rendered(anyone)
        ingress = one(objs, "NetworkPolicy")["spec"]["ingress"]
        api_rule = next(r for r in ingress if grpc in [p["port"] for p in r["ports"]])
        self.assertNotIn("from", api_rule)
        self.assertNotIn(admin, [p["port"] for p in api_rule["ports"]])
        # Enabled with the defaults: the monitoring namespace scrapes.
        objs, _ = rendered(with_values("default", networkPolicy={"enabled": True}))
        ingress = one(objs, "NetworkPolicy")["spec"]["ingress"]
        admin_rule = next(r for r in ingress if 9090 in [p["port"] for p in r["ports"]])
        self.assertEqual(admin_rule["from"], [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}])

    def test_ingress_routes_the_http_port(self):
        for name in ("default", "monitoring", "escape-hatches"):
            objs, _ = rendered(ci(name))
            self.assertFalse([k for k in objs if k.startswith("Ingress/")], name)
        values = ci("hardened")
        objs, _ = rendered(values)
        ing = one(objs, "Ingress")
        self.assertEqual(ing["spec"]["ingressClassName"], "nginx")
        self.assertEqual(ing["metadata"]["annotations"], values["ingress"]["annotations"])
        self.assertEqual(ing["spec"]["tls"], values["ingress"]["tls"])
        [rule] = ing["spec"]["rules"]
        self.assertEqual(rule["host"], "search.example.com")
        [path] = rule["http"]["paths"]
        self.assertEqual((path["path"], path["pathType"]), ("/", "Prefix"))
        backend = path["backend"]["service"]
        self.assertIn("Service/" + backend["name"], objs)
        api_ports = [p["name"] for p in objs["Service/" + backend["name"]]["spec"]["ports"]]
        self.assertEqual(backend["port"], {"name": "http"})
        self.assertIn("http", api_ports)

    def test_thread_budget_follows_the_cpu_request(self):
        objs, _ = rendered(ci("default"))
        env = {e["name"]: e for e in server(objs).get("env", [])}
        field = env["LOOKALIKE_CPUS"]["valueFrom"]["resourceFieldRef"]
        self.assertEqual(
            field, {"containerName": "lookalike", "resource": "requests.cpu", "divisor": "1"}
        )
        self.assertEqual(server(objs)["name"], "lookalike")
        # Helm merges values into the chart's: null removes the request.
        values = with_values("default", resources={"requests": {"cpu": None}})
        objs, _ = rendered(values)
        names = [e["name"] for e in server(objs).get("env", [])]
        self.assertNotIn("LOOKALIKE_CPUS", names)

    def test_escape_hatches_reach_the_pod(self):
        values = ci("escape-hatches")
        objs, _ = rendered(values)
        pod, c = pod_spec(objs), server(objs)
        env = [e for e in c["env"] if e["name"] != "LOOKALIKE_CPUS"]
        self.assertEqual(env, values["extraEnv"])
        volumes = {v["name"]: v for v in pod["volumes"]}
        for v in values["extraVolumes"]:
            self.assertEqual(volumes[v["name"]], v)
        for m in values["extraVolumeMounts"]:
            self.assertIn(m, c["volumeMounts"])
        self.assertEqual(pod["containers"][0]["name"], "lookalike")
        self.assertEqual(pod["containers"][1:], values["sidecars"])
        self.assertEqual(pod["initContainers"], values["initContainers"])
        self.assertEqual(c["startupProbe"]["timeoutSeconds"], 3)
        self.assertEqual(c["startupProbe"]["failureThreshold"], 90)
        self.assertEqual(c["readinessProbe"]["timeoutSeconds"], 2)
        # A timing not overridden keeps the chart's default.
        self.assertEqual(c["readinessProbe"]["periodSeconds"], 10)
        self.assertEqual(c["livenessProbe"]["periodSeconds"], 30)
        objs, _ = rendered(ci("default"))
        pod, c = pod_spec(objs), server(objs)
        self.assertEqual([e["name"] for e in c["env"]], ["LOOKALIKE_CPUS"])
        self.assertNotIn("initContainers", pod)
        self.assertEqual(len(pod["containers"]), 1)
        self.assertEqual({p: c[p + "Probe"]["timeoutSeconds"] for p in ("startup", "readiness", "liveness")},
                         {"startup": 1, "readiness": 1, "liveness": 1})
        self.assertNotIn("priorityClassName", pod)
        self.assertNotIn("runtimeClassName", pod)
        objs, _ = rendered(ci("hardened"))
        for spec in (pod_spec(objs), one(objs, "Pod")["spec"]):
            self.assertEqual(spec["priorityClassName"], "search-critical")
            self.assertEqual(spec["runtimeClassName"], "gvisor")

    def test_existing_claim_replaces_the_claim_template(self):
        objs, cfg = rendered(ci("escape-hatches"))
        sts = one(objs, "StatefulSet")
        self.assertNotIn("volumeClaimTemplates", sts["spec"])
        volumes = {v["name"]: v for v in pod_spec(objs)["volumes"]}
        self.assertEqual(volumes["data"], {"name": "data", "persistentVolumeClaim": {"claimName": "lookalike-data-restored"}})
        mounts = {m["name"]: m["mountPath"] for m in server(objs)["volumeMounts"]}
        self.assertEqual(mounts["data"], cfg["data_dir"])
        objs, _ = rendered(ci("default"))
        self.assertNotIn("data", [v["name"] for v in pod_spec(objs)["volumes"]])
        self.assertEqual([t["metadata"]["name"] for t in one(objs, "StatefulSet")["spec"]["volumeClaimTemplates"]], ["data"])

    def test_security_context_overrides_drop_the_fixed_ids(self):
        objs, _ = rendered(ci("escape-hatches"))
        for pod in (pod_spec(objs), one(objs, "Pod")["spec"]):
            sc = pod["securityContext"]
            for key in ("runAsUser", "runAsGroup", "fsGroup"):
                self.assertNotIn(key, sc)
            self.assertTrue(sc["runAsNonRoot"])
            self.assertEqual(sc["seccompProfile"], {"type": "RuntimeDefault"})
            self.assertTrue(pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"])
        objs, _ = rendered(ci("default"))
        self.assertEqual(pod_spec(objs)["securityContext"]["runAsUser"], 10001)
        # A null where the chart has no default, and a uid of one's own.
        values = with_values("default", containerSecurityContext={"runAsUser": None, "readOnlyRootFilesystem": None},
                             podSecurityContext={"runAsUser": 1000700000})
        objs, _ = rendered(values)
        for pod in (pod_spec(objs), one(objs, "Pod")["spec"]):
            self.assertEqual(pod["securityContext"]["runAsUser"], 1000700000)
            sc = pod["containers"][0]["securityContext"]
            self.assertNotIn("runAsUser", sc)
            self.assertNotIn("readOnlyRootFilesystem", sc)
            self.assertEqual(sc["capabilities"], {"drop": ["ALL"]})

    def test_pods_roll_when_the_tls_secret_changes(self):
        def checksum(values):
            objs, _ = rendered(values)
            return annotations(objs).get("checksum/tls")

        for name in ("default", "monitoring"):
            self.assertIsNone(checksum(ci(name)), name)
        values = ci("tls-auth")
        base = checksum(values)
        self.assertRegex(base or "", r"^[0-9a-f]{64}$")
        self.assertEqual(base, checksum(copy.deepcopy(values)))
        other = copy.deepcopy(values)
        other["tls"]["secretName"] = "lookalike-tls-2"
        self.assertNotEqual(base, checksum(other))
        self.assertRegex(checksum(ci("hardened")) or "", r"^[0-9a-f]{64}$")

    def test_helm_test_pod_uses_the_pull_secrets(self):
        objs, _ = rendered(ci("default"))
        self.assertNotIn("imagePullSecrets", one(objs, "Pod")["spec"])
        objs, _ = rendered(ci("hardened"))
        want = [{"name": "registry-example"}]
        self.assertEqual(one(objs, "Pod")["spec"]["imagePullSecrets"], want)
        self.assertEqual(pod_spec(objs)["imagePullSecrets"], want)
        self.assertEqual(one(objs, "Pod")["spec"]["containers"][0]["image"], server(objs)["image"])


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

    def test_escape_hatches_keep_kubernetes_shapes(self):
        self.assert_refused({"extraEnv": [{"value": "no name"}]})
        self.assert_refused({"extraEnv": [{"name": "A", "valu": "typo"}]})
        self.assert_refused({"extraEnv": [{"name": "A", "value": 1}]})
        self.assert_refused({"extraVolumes": [{"name": "only-a-name"}]})
        self.assert_refused({"extraVolumes": [{"name": "Bad_Name", "emptyDir": {}}]})
        self.assert_refused({"extraVolumeMounts": [{"name": "x", "mountPath": "relative"}]})
        self.assert_refused({"extraVolumeMounts": [{"name": "x", "mountPath": "/x", "readonly": True}]})
        self.assert_refused({"sidecars": [{"name": "no-image"}]})
        self.assert_refused({"podSecurityContext": {"runAsUSer": 1}})
        self.assert_refused({"podSecurityContext": {"runAsUser": "1000"}})
        self.assert_refused({"containerSecurityContext": {"readOnlyRootFilesystem": "yes"}})
        self.assert_refused({"probes": {"readiness": {"timeoutSeconds": 0}}})
        self.assert_refused({"probes": {"readiness": {"initialDelay": 5}}})
        self.assert_refused({"persistence": {"existingClaim": 5}})
        self.assert_refused({"priorityClassName": 1})

    def test_network_and_ingress_values_are_checked(self):
        self.assert_refused({"networkPolicy": {"enabled": "true"}})
        self.assert_refused({"networkPolicy": {"adminFrom": [{"namespace": "monitoring"}]}})
        self.assert_refused({"networkPolicy": {"apiFrom": [{}]}})
        self.assert_refused({"networkPolicy": {"apiFrom": [{"ipBlock": {"except": ["10.0.0.0/8"]}}]}})
        self.assert_refused({"ingress": {"hosts": [{"host": "a.example"}]}})
        self.assert_refused({"ingress": {"hosts": [{"host": "a.example", "paths": [{"path": "/", "pathType": "Regex"}]}]}})
        self.assert_refused({"adminService": {"type": "LoadBalancer"}})

    def test_inconsistent_values_fail_in_templates(self):
        self.assert_refused({"terminationGracePeriodSeconds": 10}, helm.HelmRenderError)
        self.assert_refused({"apiKeys": {"enabled": True}}, helm.HelmRenderError)
        # An Ingress needs the HTTP/JSON port to route to.
        self.assert_refused({"ingress": {"enabled": True}}, helm.HelmRenderError)
        self.assert_refused({"extraVolumes": [{"name": "data", "emptyDir": {}}]}, helm.HelmRenderError)

    def test_kubernetes_schemas_are_strict(self):
        objs, _ = rendered(ci("default"))
        sts = copy.deepcopy(one(objs, "StatefulSet"))
        kubernetes_validate.validate(sts, "1.27.0", strict=True)
        sts["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpcPort"] = 1
        with self.assertRaises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(sts, "1.27.0", strict=True)



def without_schema(values):
    """A render of the chart with values.schema.json removed, as `helm
    --skip-schema-validation` renders: the templates' own checks."""
    with tempfile.TemporaryDirectory() as tmp:
        chart = pathlib.Path(tmp) / "lookalike"
        shutil.copytree(check_chart.CHART, chart)
        (chart / "values.schema.json").unlink()
        with helm.Chart.load(str(chart)) as c:
            return c.render(values, name="lookalike", namespace="search", is_install=True)


class Cluster(unittest.TestCase):
    """Replicas sharing the galleries through NATS JetStream."""

    def test_ci_files_cover_the_cluster(self):
        names = [p.name for p in check_chart.values_files()]
        self.assertIn("cluster-values.yaml", names)
        self.assertIn("cluster-autoscale-values.yaml", names)

    def test_cluster_config_is_the_servers_toml(self):
        objs, cfg = rendered(ci("cluster"))
        self.assertEqual(cfg["cluster"], {
            "urls": [
                "tls://nats-0.nats-headless.nats.svc:4222",
                "tls://nats-1.nats-headless.nats.svc:4222",
                "tls://nats-2.nats-headless.nats.svc:4222",
            ],
            "credentials": "/etc/lookalike/nats/creds/nats.creds",
            "stream_replicas": 3,
            "prefix": "search-prod",
            "read_wait_ms": 2000,
            "tombstone_ttl_s": 1209600,
            "ack_timeout_ms": 3000,
            "tls": {
                "ca": "/etc/lookalike/nats/tls/ca.crt",
                "cert": "/etc/lookalike/nats/tls/tls.crt",
                "key": "/etc/lookalike/nats/tls/tls.key",
            },
        })
        for key in ("stream_replicas", "read_wait_ms", "tombstone_ttl_s", "ack_timeout_ms"):
            self.assertIs(type(cfg["cluster"][key]), int, key)
        # The chart's defaults, TLS with the CA only, no credentials file.
        _, cfg = rendered(ci("cluster-autoscale"))
        self.assertEqual(cfg["cluster"], {
            "urls": ["tls://nats.nats.svc:4222"],
            "stream_replicas": 3,
            "prefix": "lookalike",
            "read_wait_ms": 5000,
            "tombstone_ttl_s": 604800,
            "ack_timeout_ms": 5000,
            "tls": {"ca": "/etc/lookalike/nats/tls/ca.crt"},
        })
        # Plaintext NATS without credentials: neither key.
        values = with_values("default", cluster={"enabled": True, "urls": ["nats://nats:4222"]})
        _, cfg = rendered(values)
        self.assertEqual(set(cfg["cluster"]), {"urls", "stream_replicas", "prefix", "read_wait_ms",
                                               "tombstone_ttl_s", "ack_timeout_ms"})
        for name in ("default", "tls-auth", "hardened"):
            _, cfg = rendered(ci(name))
            self.assertNotIn("cluster", cfg, name)

    def test_replicas_and_pod_management(self):
        objs, _ = rendered(ci("default"))
        sts = one(objs, "StatefulSet")["spec"]
        self.assertEqual((sts["replicas"], sts["podManagementPolicy"]), (1, "OrderedReady"))
        objs, _ = rendered(ci("cluster"))
        sts = one(objs, "StatefulSet")["spec"]
        self.assertEqual((sts["replicas"], sts["podManagementPolicy"]), (3, "Parallel"))
        # Each replica its own claim.
        self.assertEqual([t["metadata"]["name"] for t in sts["volumeClaimTemplates"]], ["data"])
        self.assertFalse([k for k in objs if k.startswith("HorizontalPodAutoscaler/")])
        objs, _ = rendered(with_values("cluster", replicas=5))
        self.assertEqual(one(objs, "StatefulSet")["spec"]["replicas"], 5)

    def test_disruption_budget_keeps_all_but_one_replica(self):
        for replicas in (3, 5, 1):
            objs, _ = rendered(with_values("cluster", replicas=replicas))
            pdb = one(objs, "PodDisruptionBudget")["spec"]
            self.assertEqual(set(pdb), {"minAvailable", "selector"}, replicas)
            self.assertEqual(pdb["minAvailable"], replicas - 1)
        # The HPA moves the count: one unavailable at a time instead.
        objs, _ = rendered(ci("cluster-autoscale"))
        pdb = one(objs, "PodDisruptionBudget")["spec"]
        self.assertEqual(set(pdb), {"maxUnavailable", "selector"})
        self.assertEqual(pdb["maxUnavailable"], 1)
        # An explicit minAvailable wins.
        objs, _ = rendered(with_values("cluster", podDisruptionBudget={"minAvailable": 1}))
        self.assertEqual(one(objs, "PodDisruptionBudget")["spec"]["minAvailable"], 1)

    def test_autoscaler_owns_the_replica_count(self):
        values = ci("cluster-autoscale")
        objs, _ = rendered(values)
        sts = one(objs, "StatefulSet")
        self.assertNotIn("replicas", sts["spec"])
        self.assertEqual(sts["spec"]["podManagementPolicy"], "Parallel")
        hpa = one(objs, "HorizontalPodAutoscaler")
        self.assertEqual(hpa["apiVersion"], "autoscaling/v2")
        self.assertEqual(hpa["spec"]["scaleTargetRef"],
                         {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": sts["metadata"]["name"]})
        self.assertEqual((hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]), (2, 8))
        self.assertEqual(hpa["spec"]["metrics"], [{"type": "Resource", "resource": {
            "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}}])
        self.assertEqual(hpa["spec"]["behavior"], values["autoscaling"]["behavior"])
        kubernetes_validate.validate(hpa, "1.27.0", strict=True)
        # Off: no HPA, the fixed count is back.
        off = copy.deepcopy(values)
        off["autoscaling"]["enabled"] = False
        objs, _ = rendered(off)
        self.assertFalse([k for k in objs if k.startswith("HorizontalPodAutoscaler/")])
        self.assertEqual(one(objs, "StatefulSet")["spec"]["replicas"], 1)

    def test_pods_roll_when_the_nats_secrets_change(self):
        def sums(values):
            objs, _ = rendered(values)
            a = annotations(objs)
            return a.get("checksum/nats-creds"), a.get("checksum/nats-tls")

        for name in ("default", "tls-auth"):
            self.assertEqual(sums(ci(name)), (None, None), name)
        values = ci("cluster")
        creds, tls = sums(values)
        self.assertRegex(creds or "", r"^[0-9a-f]{64}$")
        self.assertRegex(tls or "", r"^[0-9a-f]{64}$")
        self.assertNotEqual(creds, tls)
        self.assertEqual(sums(copy.deepcopy(values)), (creds, tls))
        other = copy.deepcopy(values)
        other["cluster"]["credentialsSecret"]["name"] = "lookalike-nats-creds-2"
        self.assertEqual(sums(other)[1], tls)
        self.assertNotEqual(sums(other)[0], creds)
        other = copy.deepcopy(values)
        other["cluster"]["credentialsSecret"]["key"] = "other.creds"
        self.assertNotEqual(sums(other)[0], creds)
        other = copy.deepcopy(values)
        other["cluster"]["tlsSecret"]["name"] = "lookalike-nats-tls-2"
        self.assertEqual(sums(other)[0], creds)
        self.assertNotEqual(sums(other)[1], tls)
        # CA only, no credentials.
        creds, tls = sums(ci("cluster-autoscale"))
        self.assertIsNone(creds)
        self.assertRegex(tls or "", r"^[0-9a-f]{64}$")

    def test_nats_secrets_mounted_where_the_config_reads_them(self):
        values = ci("cluster")
        objs, cfg = rendered(values)
        c, pod = server(objs), pod_spec(objs)
        mounts = {m["name"]: m for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        creds = cfg["cluster"]["credentials"]
        self.assertEqual(mounts["nats-creds"]["mountPath"], posixpath.dirname(creds))
        self.assertTrue(mounts["nats-creds"]["readOnly"])
        self.assertEqual(volumes["nats-creds"]["secret"], {
            "secretName": "lookalike-nats-creds",
            "items": [{"key": "lookalike.creds", "path": posixpath.basename(creds)}]})
        tls = cfg["cluster"]["tls"]
        for key, file in (("ca", "ca.crt"), ("cert", "tls.crt"), ("key", "tls.key")):
            self.assertEqual(tls[key], posixpath.join(mounts["nats-tls"]["mountPath"], file), key)
        self.assertTrue(mounts["nats-tls"]["readOnly"])
        self.assertEqual(volumes["nats-tls"]["secret"], {"secretName": "lookalike-nats-tls"})
        # Without the Secrets: no such volumes.
        objs, _ = rendered(with_values("default", cluster={"enabled": True, "urls": ["nats://nats:4222"]}))
        names = {v["name"] for v in pod_spec(objs)["volumes"]} | {m["name"] for m in server(objs)["volumeMounts"]}
        self.assertFalse(names & {"nats-creds", "nats-tls"})
        # Named but cluster off: nothing mounted, nothing configured.
        off = copy.deepcopy(values)
        off["cluster"]["enabled"] = False
        off["replicas"] = 1
        objs, cfg = rendered(off)
        self.assertNotIn("cluster", cfg)
        self.assertNotIn("nats-creds", {v["name"] for v in pod_spec(objs)["volumes"]})
        self.assertNotIn("checksum/nats-creds", annotations(objs))


class ClusterRefused(unittest.TestCase):
    def test_replicas_need_the_cluster(self):
        for values in ({"replicas": 2}, {"replicas": 3, "cluster": {"enabled": False}},
                       {"autoscaling": {"enabled": True}},
                       {"autoscaling": {"enabled": True}, "cluster": {"enabled": False, "urls": ["nats://n:4222"]}}):
            with self.assertRaises(helm.HelmValuesError, msg=values):
                check_chart.render(values)
        # The templates refuse them too where the schema is skipped, saying why.
        with self.assertRaisesRegex(helm.HelmRenderError, "replicas: 2 needs cluster.enabled"):
            without_schema({"replicas": 2})
        with self.assertRaisesRegex(helm.HelmRenderError, "autoscaling.enabled needs cluster.enabled"):
            without_schema({"autoscaling": {"enabled": True}})
        with self.assertRaisesRegex(helm.HelmRenderError, "needs cluster.urls"):
            without_schema({"cluster": {"enabled": True}})
        with self.assertRaisesRegex(helm.HelmRenderError, "existingClaim is one volume"):
            without_schema(with_values("cluster", persistence={"existingClaim": "mine"}))
        # The same values render with the cluster on.
        without_schema(with_values("cluster", replicas=2))

    def test_cluster_values_are_checked(self):
        base = ci("cluster")

        def refused(error=helm.HelmValuesError, **cluster):
            values = copy.deepcopy(base)
            values["cluster"].update(cluster)
            with self.assertRaises(error, msg=cluster):
                check_chart.render(values)

        refused(urls=[])
        refused(urls=["nats-0:4222"])
        refused(urls="nats://nats:4222")
        refused(streamReplicas=2)
        refused(prefix="")
        refused(prefix="has.dot")
        refused(prefix="x" * 33)
        refused(tombstoneTtlS=59)
        refused(ackTimeoutMs=0)
        refused(readWaitMs=-1)
        refused(credentialsSecret={"name": "c", "key": ""})
        refused(tlsSecret={"name": "t", "clientAuth": True})
        refused(surprise=True)
        check_chart.render(copy.deepcopy(base))
        # Set through the chart's values, not config.
        self.assertRaises(helm.HelmValuesError, check_chart.render,
                          with_values("cluster", config={"cluster": {"urls": ["nats://n:4222"]}}))
        # One claim cannot hold several replicas' copies.
        self.assertRaises(helm.HelmValuesError, check_chart.render,
                          with_values("cluster", persistence={"existingClaim": "mine"}))
        self.assertRaises(helm.HelmValuesError, check_chart.render,
                          with_values("cluster-autoscale", persistence={"existingClaim": "mine"}))
        objs, _ = rendered(with_values("cluster", replicas=1, persistence={"existingClaim": "mine"}))
        self.assertNotIn("volumeClaimTemplates", one(objs, "StatefulSet")["spec"])

    def test_autoscaler_values_are_checked(self):
        def refused(values, error):
            with self.assertRaises(error, msg=values):
                check_chart.render(values)

        base = ci("cluster-autoscale")
        for bad in ({"minReplicas": 0}, {"maxReplicas": "many"}, {"targetCPUUtilizationPercentage": 0},
                    {"surprise": 1}):
            refused(with_values("cluster-autoscale", autoscaling={**base["autoscaling"], **bad}), helm.HelmValuesError)
        refused(with_values("cluster-autoscale", autoscaling={**base["autoscaling"], "minReplicas": 9}),
                helm.HelmRenderError)
        # The HPA's utilisation is relative to the CPU request.
        refused(with_values("cluster-autoscale", resources={"requests": {"cpu": None}}), helm.HelmRenderError)
        self.assertRaises(helm.HelmRenderError, check_chart.render,
                          {**base, "extraVolumes": [{"name": "nats-tls", "emptyDir": {}}]})


class Dockerfile(unittest.TestCase):
    TEXT = (pathlib.Path(__file__).resolve().parent / "Dockerfile").read_text()

    def final_stage(self):
        return self.TEXT[self.TEXT.rindex("\nFROM "):]

    def test_health_check_runs_the_health_subcommand(self):
        m = re.search(r"^HEALTHCHECK (.*?)CMD (\[.*\])$", self.final_stage().replace("\\\n", " "), re.M)
        self.assertIsNotNone(m)
        self.assertEqual(check_chart.yaml.safe_load(m.group(2)), ["/usr/local/bin/lookalike", "health"])
        # Long enough for the model and the galleries to load.
        self.assertIn("--start-period=5m", m.group(1))

    def test_oci_labels(self):
        labels = dict(re.findall(r'(org\.opencontainers\.image\.[a-z]+)="([^"]*)"', self.final_stage()))
        self.assertEqual(labels["org.opencontainers.image.title"], "lookalike")
        self.assertEqual(labels["org.opencontainers.image.licenses"], "MIT OR Apache-2.0")
        self.assertEqual(labels["org.opencontainers.image.version"], "${VERSION}")
        for key in ("description", "source", "revision"):
            self.assertIn("org.opencontainers.image." + key, labels)
        self.assertIn("\nARG VERSION\n", self.final_stage())


if __name__ == "__main__":
    unittest.main()
