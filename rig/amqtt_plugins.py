"""The embedded amqtt broker's share of the lab's security: the same
passwords and ACL as the mosquitto files ``rig up`` generates
(rig/security.py), as amqtt 0.12 plugins.

* :class:`RigAuthPlugin`: a client must log in as a user of the lab's
  credential store with its password; no anonymous clients.
* :class:`RigTopicPlugin`: publish, subscribe and delivery checked against
  the store's ACL (amqtt 0.12 checks ``RECEIVE`` for live messages only; the
  rig's broker subclass checks retained ones too, see rig/broker.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin

from .security import CredentialStore, load_passwd, verify_password


class RigAuthPlugin(BaseAuthPlugin):
    def __init__(self, context) -> None:
        super().__init__(context)
        self._hashes = load_passwd(Path(self.config.store) / "passwd")
        self._acl = CredentialStore.open(Path(self.config.store)).acl

    async def authenticate(self, *, session) -> bool:
        user, password = session.username, session.password
        hashed = self._hashes.get(user or "")
        ok = bool(hashed and isinstance(password, str) and verify_password(password, hashed))
        if not ok:
            self.context.logger.warning("refused connection of %s: user %r not authenticated", session.client_id, user)
            return False
        # amqtt 0.12 publishes a Last Will without asking the topic plugins: a
        # client may only leave a will where it may publish
        if session.will_flag and not self._acl.may_publish(user, session.client_id, session.will_topic or ""):
            self.context.logger.warning("refused connection of %s: user %r may not publish its will on %s",
                                        session.client_id, user, session.will_topic)
            return False
        return True

    @dataclass
    class Config:
        store: str = ""


class RigTopicPlugin(BaseTopicPlugin):
    def __init__(self, context) -> None:
        super().__init__(context)
        self._acl = CredentialStore.open(Path(self.config.store)).acl

    async def topic_filtering(self, *, session=None, topic=None, action=None) -> bool:
        if session is None or topic is None:
            return False
        user, cid = session.username, session.client_id
        if action == Action.PUBLISH:
            ok = self._acl.may_publish(user, cid, topic)
        elif action == Action.SUBSCRIBE:
            ok = self._acl.may_subscribe(user, cid, topic)
        else:
            ok = self._acl.may_receive(user, cid, topic)
        if not ok and action != Action.RECEIVE:
            self.context.logger.info("denied %s of %s to %s (%s)", action, topic, cid, user)
        return ok

    @dataclass
    class Config:
        store: str = ""
