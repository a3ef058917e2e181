"""
Tests for L{xmppjson.tap}: the twistd plugin's options and the service it builds.
"""

from __future__ import annotations

from typing import Any

from twisted.application import internet, service
from twisted.application.service import IServiceMaker
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial import unittest

from xmppjson import tap
from xmppjson.config import Config


class OptionsTests(unittest.TestCase):
    """Command-line parsing into a L{Config}."""

    def parse(self, *args: str) -> tap.Options:
        options = tap.Options(reactor=MemoryReactorClock())
        options.parseOptions(list(args))
        return options

    def assertUsageError(self, args: list[str], *fragments: str) -> None:
        """Parsing C{args} fails with a message holding every fragment."""
        e = self.assertRaises(usage.UsageError, self.parse, *args)
        for fragment in fragments:
            self.assertIn(fragment, str(e))

    def test_defaults(self) -> None:
        """Without options, the configuration is exactly the documented defaults."""
        config = self.parse().toConfig()
        self.assertEqual(config, Config())
        self.assertEqual(
            (config.domain, config.c2s, config.web, config.db),
            ("localhost", "tcp:5222", "tcp:8080", "sqlite:xmppjson.sqlite3"),
        )
        self.assertEqual((config.registration, config.tokenTTL, config.scramIterations),
                         ("open", 86400, 4096))
        self.assertEqual(config.maxHTTPBody, 65536)
        self.assertFalse(config.allowPlaintext)
        self.assertFalse(config.verbose)

    def test_everyOption(self) -> None:
        cert = self.mktemp()
        key = self.mktemp()
        for path in (cert, key):
            with open(path, "w") as f:
                f.write("-")
        config = self.parse(
            "--domain", " Chat.Example.ORG ",
            "--c2s", "tcp:15222:interface=127.0.0.1",
            "--web", "tcp:18080",
            "--db", "postgresql://xmpp:secret@db.example.org:5432/xmpp",
            "--tls-cert", cert,
            "--tls-key", key,
            "--registration", "closed",
            "--token-ttl", "600",
            "--scram-iterations", "10000",
            "--max-stanza-size", "1000",
            "--max-frame-size", "2000",
            "--max-sessions-per-user", "3",
            "--max-http-body", "4096",
            "--allow-plaintext",
            "--verbose",
        ).toConfig()
        self.assertEqual(config, Config(
            domain="chat.example.org",
            c2s="tcp:15222:interface=127.0.0.1",
            web="tcp:18080",
            db="postgresql://xmpp:secret@db.example.org:5432/xmpp",
            tlsCert=cert,
            tlsKey=key,
            registration="closed",
            tokenTTL=600,
            scramIterations=10000,
            maxStanzaSize=1000,
            maxFrameSize=2000,
            maxSessionsPerUser=3,
            maxHTTPBody=4096,
            allowPlaintext=True,
            verbose=True,
        ))
        self.assertTrue(self.parse("-v").toConfig().verbose)

    def test_databases(self) -> None:
        for url in ("sqlite::memory:", "sqlite:/var/lib/xmppjson/db.sqlite3",
                    "postgres://u@localhost/x", "postgresql://u:p@h:5433/x"):
            self.assertEqual(self.parse("--db", url).toConfig().db, url)

    def test_badNumbers(self) -> None:
        for name in ("token-ttl", "scram-iterations", "max-stanza-size", "max-frame-size",
                     "max-sessions-per-user", "max-http-body"):
            self.assertUsageError([f"--{name}", "ten"], f"--{name}", "whole number", "'ten'")
            self.assertUsageError([f"--{name}", "0"], f"--{name}", "greater than 0")
            self.assertUsageError([f"--{name}", "-5"], f"--{name}", "greater than 0")

    def test_badEndpoints(self) -> None:
        self.assertUsageError(["--web", "bogus:1"], "--web", "not a valid endpoint")
        self.assertUsageError(["--c2s", "tcp:port"], "--c2s", "not a valid endpoint")
        self.assertUsageError(["--web", "8080"], "--web", "not a valid endpoint")

    def test_badDatabase(self) -> None:
        self.assertUsageError(["--db", "mysql://x/y"], "--db", "postgresql://")
        self.assertUsageError(["--db", "xmppjson.sqlite3"], "sqlite:FILE")
        self.assertUsageError(["--db", "sqlite:"], "needs a file name")

    def test_badDomain(self) -> None:
        for domain in ("", "user@example.org", "example.org/res", "two words", "a" * 1024):
            self.assertUsageError(["--domain", domain], "--domain", "not a valid domain")

    def test_badRegistration(self) -> None:
        self.assertUsageError(["--registration", "maybe"], "open or closed", "'maybe'")

    def test_badTLS(self) -> None:
        self.assertUsageError(["--tls-cert", "cert.pem"], "--tls-cert and --tls-key go together")
        self.assertUsageError(["--tls-key", "key.pem"], "go together")
        self.assertUsageError(["--tls-cert", "/nonexistent/c.pem", "--tls-key", "/nonexistent/k"],
                              "--tls-cert", "no such file")

    def test_unknownOption(self) -> None:
        self.assertRaises(usage.UsageError, self.parse, "--port", "1")


class PluginTests(unittest.TestCase):
    """The twistd plugin is found and points at this module."""

    def test_discovered(self) -> None:
        makers = {m.tapname: m for m in getPlugins(IServiceMaker)}
        self.assertIn("xmppjson", makers)
        maker = makers["xmppjson"]
        self.assertIs(maker.options, tap.Options)
        self.assertEqual(maker.makeService, tap.makeService)


class MakeServiceTests(unittest.TestCase):
    """The service twistd runs, built on a memory reactor: nothing listens."""

    def build(self, *args: str) -> tuple[Any, MemoryReactorClock]:
        reactor = MemoryReactorClock()
        options = tap.Options(reactor=reactor)
        options.parseOptions(["--db", "sqlite::memory:", *args])
        return tap.makeService(options, reactor=reactor), reactor

    def test_namedService(self) -> None:
        server, reactor = self.build("--web", "tcp:18080", "--c2s", "tcp:15222")
        self.assertIsInstance(server, service.MultiService)
        self.assertEqual(server.name, "xmppjson")
        names = {child.name for child in server}
        self.assertTrue({"store", "im", "web", "c2s"} <= names, names)
        self.assertFalse(server.running)
        self.assertEqual(reactor.tcpServers, [])
        web = server.getServiceNamed("web")
        c2s = server.getServiceNamed("c2s")
        self.assertIsInstance(web, internet.StreamServerEndpointService)
        self.assertIsInstance(c2s, internet.StreamServerEndpointService)
        self.assertEqual(web.endpoint._port, 18080)
        self.assertEqual(c2s.endpoint._port, 15222)
        # the parts share one configuration
        self.assertEqual(server.config.web, "tcp:18080")
        self.assertIs(server.accounts.store, server.store)

    def test_siteServesREST(self) -> None:
        """The web listener's factory is the Site whose root serves REST and /stream."""
        from xmppjson.rest import RestResource

        server, _ = self.build()
        site = server.getServiceNamed("web").factory
        self.assertIsInstance(site.resource.rest, RestResource)
        self.assertIn(b"stream", site.resource.children)
        self.assertEqual(site.maxBody, 64 * 1024)


class CollectorTests(unittest.TestCase):
    """twistd's service tunes the garbage collector while it runs, and puts it back after."""

    def test_tunedWhileRunning(self) -> None:
        import gc

        from xmppjson.service import CollectorService

        before = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *before)
        self.addCleanup(gc.unfreeze)
        server, reactor = MakeServiceTests.build(self, "--web", "tcp:18080", "--c2s", "tcp:15222")
        collector = server.getServiceNamed("collector")
        self.assertIsInstance(collector, CollectorService)
        collector.startService()
        self.assertEqual(gc.get_threshold(), CollectorService.thresholds)
        self.assertEqual(gc.get_freeze_count(), 0)  # not before the reactor runs
        reactor.advance(0)
        self.assertGreater(gc.get_freeze_count(), 0)
        collector.stopService()
        self.assertEqual(gc.get_threshold(), before)
        self.assertEqual(gc.get_freeze_count(), 0)

    def test_offInTheEnvironment(self) -> None:
        import gc
        import os

        from xmppjson.service import CollectorService

        before = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *before)
        self.patch(os, "environ", {**os.environ, "XMPPJSON_GC": "off"})
        reactor = MemoryReactorClock()
        collector = CollectorService(reactor)
        collector.startService()
        self.assertEqual(gc.get_threshold(), before)
        self.assertEqual(reactor.getDelayedCalls(), [])
        collector.stopService()
        self.assertEqual(gc.get_threshold(), before)

    def test_stoppedBeforeTheFreeze(self) -> None:
        import gc

        from xmppjson.service import CollectorService

        before = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *before)
        reactor = MemoryReactorClock()
        collector = CollectorService(reactor)
        collector.startService()
        collector.stopService()
        self.assertEqual(reactor.getDelayedCalls(), [])
        self.assertEqual(gc.get_threshold(), before)


class LimitOptionsTests(unittest.TestCase):
    """The limit options reach the Config, and bad values are UsageErrors."""

    def parse(self, *argv: str) -> tap.Options:
        options = tap.Options(reactor=MemoryReactorClock())
        options.parseOptions(list(argv))
        return options

    def test_limitsReachConfig(self) -> None:
        config = self.parse(
            "--stanza-rate", "0", "--stanza-burst", "10", "--max-connections-per-address", "5",
            "--handshake-timeout", "30", "--idle-timeout", "600", "--max-stanza-size-preauth", "4096",
            "--allowed-origin", "https://a.example", "--allowed-origin", "https://b.example",
        ).toConfig()
        self.assertEqual(config.stanzaRate, 0)
        self.assertEqual(config.stanzaBurst, 10)
        self.assertEqual(config.maxConnectionsPerAddress, 5)
        self.assertEqual((config.handshakeTimeout, config.idleTimeout), (30, 600))
        self.assertEqual(config.maxStanzaSizePreAuth, 4096)
        self.assertEqual(config.allowedOrigins, ("https://a.example", "https://b.example"))

    def test_defaults(self) -> None:
        config = self.parse().toConfig()
        self.assertEqual((config.stanzaRate, config.stanzaBurst), (50, 200))
        self.assertEqual(config.allowedOrigins, ())

    def test_badLimits(self) -> None:
        for argv, words in [
            (["--stanza-rate", "-1"], "0 or more"),
            (["--stanza-rate", "fast"], "must be a number"),
            (["--scram-iterations", "1000"], "at least 4096"),
        ]:
            with self.assertRaises(usage.UsageError) as caught:
                self.parse(*argv)
            self.assertIn(words, str(caught.exception))


class ClusterOptionsTests(unittest.TestCase):
    def parse(self, *argv: str) -> tap.Options:
        options = tap.Options(reactor=MemoryReactorClock())
        options.parseOptions(list(argv))
        return options

    def test_clusterReachesConfig(self) -> None:
        config = self.parse("--db", "postgresql://u:p@localhost/x", "--cluster", "--node-name", "node-1",
                            "--cluster-heartbeat", "1", "--cluster-timeout", "5").toConfig()
        self.assertTrue(config.cluster)
        self.assertEqual((config.nodeName, config.clusterHeartbeat, config.clusterTimeout), ("node-1", 1, 5))

    def test_clusterNeedsPostgreSQL(self) -> None:
        with self.assertRaises(usage.UsageError) as caught:
            self.parse("--cluster")
        self.assertIn("postgresql://", str(caught.exception))

    def test_badClusterValues(self) -> None:
        pg = ["--db", "postgresql://u:p@localhost/x", "--cluster"]
        for extra, words in [
            (["--node-name", "no spaces"], "--node-name"),
            (["--cluster-timeout", "1", "--cluster-heartbeat", "2"], "greater than"),
        ]:
            with self.assertRaises(usage.UsageError) as caught:
                self.parse(*pg, *extra)
            self.assertIn(words, str(caught.exception))


class ThrottleOptionsTests(unittest.TestCase):
    def test_throttlesReachConfig(self) -> None:
        options = tap.Options(reactor=MemoryReactorClock())
        options.parseOptions(["--sm-resume-timeout", "0", "--auth-failure-limit", "3", "--auth-failure-period", "30",
                              "--registrations-per-address", "0", "--registration-exempt", "10.0.0.1, ::1"])
        config = options.toConfig()
        self.assertEqual((config.smResumeTimeout, config.authFailureLimit, config.authFailurePeriod), (0, 3, 30))
        self.assertEqual(config.registrationsPerAddress, 0)
        self.assertEqual(config.registrationExempt, ("10.0.0.1", "::1"))

    def test_periodMustBePositive(self) -> None:
        options = tap.Options(reactor=MemoryReactorClock())
        with self.assertRaises(usage.UsageError):
            options.parseOptions(["--auth-failure-period", "0"])


class ArchiveAndProxyOptionsTests(unittest.TestCase):
    def test_archiveAndProxies(self) -> None:
        options = tap.Options(reactor=MemoryReactorClock())
        options.parseOptions(["--no-archive", "--archive-days", "30", "--trusted-proxy", "10.0.0.2"])
        config = options.toConfig()
        self.assertEqual((config.archive, config.archiveDays), (False, 30))
        self.assertEqual(config.trustedProxies, ("10.0.0.2",))

    def test_archiveOnByDefault(self) -> None:
        options = tap.Options(reactor=MemoryReactorClock())
        options.parseOptions([])
        self.assertTrue(options.toConfig().archive)
