"""Tests of the pure-Python protocol types, checked against paho-mqtt 2.2.0."""

from __future__ import annotations

import itertools
import json
import pickle
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import paho.mqtt.client as paho_client
import paho.mqtt.enums as paho_enums
from paho.mqtt.exception import MQTTException as PahoMQTTException
from paho.mqtt.matcher import MQTTMatcher as PahoMatcher
from paho.mqtt.packettypes import PacketTypes as PahoPacketTypes
from paho.mqtt.properties import Properties as PahoProperties
from paho.mqtt.properties import VariableByteIntegers as PahoVBI
from paho.mqtt.reasoncodes import ReasonCode as PahoReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions as PahoSubscribeOptions

from sermas_bus import enums
from sermas_bus.enums import (
    CallbackAPIVersion,
    ConnackCode,
    LogLevel,
    MessageState,
    MessageType,
    MQTTErrorCode,
    MQTTProtocolVersion,
    PahoClientMode,
    connack_string,
    error_string,
)
from sermas_bus.matcher import (
    MQTTMatcher,
    TopicMatcher,
    topic_matches_sub,
    validate_topic_filter,
    validate_topic_name,
)
from sermas_bus.packettypes import PacketTypes, packet_name
from sermas_bus.properties import Properties, VariableByteIntegers
from sermas_bus.reasoncodes import ReasonCode, ReasonCodeError, ReasonCodes, reason_code_from_int
from sermas_bus.subscribeoptions import SubscribeOptions

ALL_PACKET_TYPES = list(range(1, 16)) + [PacketTypes.WILLMESSAGE]

# Combinations the MQTT 5 standard defines but paho 2.2.0 omits.
EXTRA_REASON_CODES = {(PacketTypes.CONNACK, 0x99)}


# ---------------------------------------------------------------------------
# enums


@pytest.mark.parametrize("ours, theirs", [
    (MQTTErrorCode, paho_enums.MQTTErrorCode),
    (MQTTProtocolVersion, paho_enums.MQTTProtocolVersion),
    (CallbackAPIVersion, paho_enums.CallbackAPIVersion),
    (MessageType, paho_enums.MessageType),
    (MessageState, paho_enums.MessageState),
    (ConnackCode, paho_enums.ConnackCode),
    (LogLevel, paho_enums.LogLevel),
    (PahoClientMode, paho_enums.PahoClientMode),
])
def test_enum_members_match_paho(ours, theirs):
    assert [(m.name, m.value) for m in ours] == [(m.name, m.value) for m in theirs]


def test_int_enums_compare_as_ints():
    assert MQTTErrorCode.MQTT_ERR_SUCCESS == 0
    assert MQTTErrorCode.MQTT_ERR_AGAIN == -1
    assert MQTTErrorCode.MQTT_ERR_KEEPALIVE == 16
    assert MQTTProtocolVersion.MQTTv5 == 5
    assert LogLevel.MQTT_LOG_DEBUG == 16
    assert CallbackAPIVersion.VERSION2.value == 2
    assert CallbackAPIVersion.VERSION2 != 2  # plain Enum, as in paho


def test_module_constants_match_paho_client():
    names = [n for n in dir(enums) if n.startswith(("MQTT_ERR_", "CONNACK_", "MQTT_LOG_", "MQTTv"))]
    assert len(names) == 18 + 6 + 5 + 3
    for name in names:
        assert getattr(enums, name) == getattr(paho_client, name), name
    assert enums.MQTT_CLIENT == 0 and enums.MQTT_BRIDGE == 1


@pytest.mark.parametrize("code", list(paho_enums.MQTTErrorCode))
def test_error_string_matches_paho(code):
    ours = error_string(code)
    assert ours == error_string(int(code))
    if code == MQTTErrorCode.MQTT_ERR_AGAIN:
        # paho has no text for it ("Unknown error."); ours says what it means
        assert "again" in ours.lower()
    else:
        assert ours == paho_client.error_string(code)


@pytest.mark.parametrize("code", [17, 100, -2, 2**40])
def test_error_string_unknown_code(code):
    assert error_string(code) == paho_client.error_string(code) == "Unknown error."


def test_error_string_non_int():
    assert error_string("x") == "Unknown error."  # type: ignore[arg-type]
    assert error_string(None) == "Unknown error."  # type: ignore[arg-type]


@pytest.mark.parametrize("code", list(range(-1, 8)) + [255])
def test_connack_string_matches_paho(code):
    assert connack_string(code) == paho_client.connack_string(code)


def test_connack_string_of_reason_code():
    rc = ReasonCode(PacketTypes.CONNACK, identifier=0x86)
    assert connack_string(rc) == "Bad user name or password"
    assert connack_string(ConnackCode.CONNACK_REFUSED_NOT_AUTHORIZED) == "Connection Refused: not authorised."
    assert connack_string("nope") == "Connection Refused: unknown reason."  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# packet types


def test_packet_types_match_paho():
    for name in ["CONNECT", "CONNACK", "PUBLISH", "PUBACK", "PUBREC", "PUBREL", "PUBCOMP",
                 "SUBSCRIBE", "SUBACK", "UNSUBSCRIBE", "UNSUBACK", "PINGREQ", "PINGRESP",
                 "DISCONNECT", "AUTH", "WILLMESSAGE"]:
        assert getattr(PacketTypes, name) == getattr(PahoPacketTypes, name), name
    assert tuple(PacketTypes.Names) == tuple(PahoPacketTypes.Names)
    assert list(PacketTypes.indexes) == list(PahoPacketTypes.indexes) == list(range(1, 16))
    assert PacketTypes.CONNECT == 1 and PacketTypes.AUTH == 15 and PacketTypes.WILLMESSAGE == 99


def test_packet_name():
    assert packet_name(PacketTypes.PUBLISH) == "Publish"
    assert packet_name(PacketTypes.WILLMESSAGE) == "Will message"
    assert "Unknown" in packet_name(42)
    assert "Unknown" in packet_name(-1)


# ---------------------------------------------------------------------------
# reason codes


def _paho_rc(packet_type, value):
    try:
        return PahoReasonCode(packet_type, identifier=value)
    except (KeyError, ValueError):
        return None


@pytest.mark.parametrize("packet_type", list(range(0, 17)) + [PacketTypes.WILLMESSAGE])
def test_every_reason_code_matches_paho(packet_type):
    for value in range(256):
        theirs = _paho_rc(packet_type, value)
        if theirs is None and (packet_type, value) not in EXTRA_REASON_CODES:
            with pytest.raises(ReasonCodeError):
                ReasonCode(packet_type, identifier=value)
            continue
        ours = ReasonCode(packet_type, identifier=value)
        assert ours.value == value
        if theirs is not None:
            assert str(ours) == str(theirs)
            assert ours.getName() == theirs.getName()
            assert repr(ours) == repr(theirs)
            assert ours.json() == theirs.json()
            assert ours.is_failure == theirs.is_failure
            assert ours.pack() == theirs.pack()
            # and by name
            assert ReasonCode(packet_type, theirs.getName()).value == value


def test_extra_reason_codes_are_from_the_standard():
    rc = ReasonCode(PacketTypes.CONNACK, identifier=0x99)
    assert str(rc) == "Payload format invalid"
    assert rc.is_failure


def test_names_table_matches_paho():
    ours = {v: {n: sorted(p) for n, p in names.items()} for v, names in ReasonCode.names.items()}
    theirs = {v: {n: sorted(p) for n, p in names.items()} for v, names in PahoReasonCode.names.items()}
    for packet_type, value in EXTRA_REASON_CODES:
        for packets in ours[value].values():
            packets.remove(packet_type)
    assert ours == theirs


@pytest.mark.parametrize("value, name", [
    (0x87, "Not authorized"), (0x84, "Unsupported protocol version"), (0x80, "Unspecified error"),
    (0x86, "Bad user name or password"), (0x97, "Quota exceeded"), (0x00, "Success"),
])
def test_reason_code_known_names(value, name):
    assert str(ReasonCode(PacketTypes.CONNACK, identifier=value)) == name


def test_reason_code_names_depend_on_packet_type():
    assert str(ReasonCode(PacketTypes.PUBACK, identifier=0)) == "Success"
    assert str(ReasonCode(PacketTypes.DISCONNECT, identifier=0)) == "Normal disconnection"
    assert str(ReasonCode(PacketTypes.SUBACK, identifier=0)) == "Granted QoS 0"
    assert str(ReasonCode(PacketTypes.SUBACK, identifier=1)) == "Granted QoS 1"
    assert str(ReasonCode(PacketTypes.SUBACK, identifier=2)) == "Granted QoS 2"
    assert str(ReasonCode(PacketTypes.DISCONNECT, identifier=4)) == "Disconnect with will message"
    assert str(ReasonCode(PacketTypes.PUBACK, identifier=0x10)) == "No matching subscribers"
    assert str(ReasonCode(PacketTypes.UNSUBACK, identifier=0x11)) == "No subscription found"
    assert str(ReasonCode(PacketTypes.DISCONNECT, identifier=0x8E)) == "Session taken over"


def test_reason_code_defaults():
    rc = ReasonCode(PacketTypes.PUBACK)
    assert rc.value == 0 and str(rc) == "Success" and not rc.is_failure
    rc = ReasonCode(PacketTypes.DISCONNECT)  # "Success" becomes "Normal disconnection"
    assert rc.value == 0 and str(rc) == "Normal disconnection"
    assert str(PahoReasonCode(PacketTypes.DISCONNECT)) == str(rc)


def test_reason_code_bad_name_raises_key_and_value_error():
    with pytest.raises(KeyError):
        ReasonCode(PacketTypes.SUBACK)  # "Success" is not a SUBACK name
    with pytest.raises(KeyError):
        PahoReasonCode(PacketTypes.SUBACK)
    with pytest.raises(ValueError) as info:
        ReasonCode(PacketTypes.PUBACK, "Banned")
    message = str(info.value)
    assert "'Banned'" in message and "Puback" in message and "Not authorized" in message


def test_reason_code_bad_value_messages():
    with pytest.raises(ReasonCodeError) as info:
        ReasonCode(PacketTypes.PUBACK, identifier=0x8E)
    assert "0x8E" in str(info.value) and "Puback" in str(info.value) and "Disconnect" in str(info.value)
    with pytest.raises(KeyError):
        ReasonCode(PacketTypes.PUBACK, identifier=0x05)
    with pytest.raises(ValueError) as info:
        ReasonCode(PacketTypes.PUBACK, identifier=0x05)
    assert "0x05" in str(info.value)


def test_reason_code_equality_and_ordering():
    rc = ReasonCode(PacketTypes.PUBACK, identifier=0x87)
    assert rc == 0x87 and 0x87 == rc
    assert rc == "Not authorized" and "Not authorized" == rc
    assert rc != "Success" and rc != 0
    assert rc == ReasonCode(PacketTypes.SUBACK, identifier=0x87)
    assert rc != ReasonCode(PacketTypes.PUBACK, identifier=0x80)
    assert rc != None  # noqa: E711
    assert rc != 135.0  # only ints, names and ReasonCodes compare equal, as in paho
    assert rc != object()
    assert rc > 0x80 and rc >= 0x87 and rc < 0x90 and rc <= 0x87
    assert ReasonCode(PacketTypes.PUBACK, identifier=0) < rc
    assert sorted([rc, ReasonCode(PacketTypes.PUBACK), ReasonCode(PacketTypes.PUBACK, identifier=0x10)]) \
        == [0, 0x10, 0x87]
    with pytest.raises(TypeError):
        rc < "x"  # noqa: B015
    assert ReasonCode(PacketTypes.SUBACK, identifier=5 - 4) == MQTTErrorCode.MQTT_ERR_NOMEM  # IntEnum is an int


def test_reason_code_hash_int_repr_json():
    rc = ReasonCode(PacketTypes.SUBACK, identifier=2)
    assert hash(rc) == hash(2)
    assert rc in {2, 5} and {rc: "x"}[2] == "x"
    assert int(rc) == 2 and isinstance(int(rc), int)
    assert repr(rc) == "ReasonCode(Suback, 'Granted QoS 2')"
    assert json.dumps({"rc": rc.json()}) == '{"rc": "Granted QoS 2"}'
    assert rc.packetType == PacketTypes.SUBACK


def test_reason_code_is_failure():
    assert not ReasonCode(PacketTypes.SUBACK, identifier=2).is_failure
    assert ReasonCode(PacketTypes.SUBACK, identifier=0x80).is_failure
    assert ReasonCode(PacketTypes.AUTH, identifier=0x19).is_failure is False


def test_reason_code_set_get_id_pack_unpack():
    rc = ReasonCode(PacketTypes.PUBREC)
    rc.set("Quota exceeded")
    assert rc.value == 0x97 and rc.getId("No matching subscribers") == 0x10
    assert rc.pack() == bytearray(b"\x97")
    assert rc.unpack(b"\x10\xff") == 1 and rc == "No matching subscribers"
    with pytest.raises(ReasonCodeError):
        rc.unpack(b"\x8e")
    with pytest.raises(ReasonCodeError):
        rc.set("Granted QoS 1")


def test_reason_code_pickles():
    rc = ReasonCode(PacketTypes.CONNACK, identifier=0x87)
    clone = pickle.loads(pickle.dumps(rc))
    assert clone == rc and clone.packetType == rc.packetType and str(clone) == "Not authorized"


def test_reason_code_from_int():
    rc = reason_code_from_int(PacketTypes.CONNACK, 0x87)
    assert isinstance(rc, ReasonCode) and rc == 0x87 and str(rc) == "Not authorized"
    assert rc.packetType == PacketTypes.CONNACK
    rc = reason_code_from_int(PacketTypes.PUBACK, 0x05)
    assert rc.value == 5 and str(rc) == "Unknown reason code 0x05" and not rc.is_failure
    assert repr(rc) == "ReasonCode(Puback, 'Unknown reason code 0x05')"
    rc = reason_code_from_int(PacketTypes.CONNACK, 0x01)  # a value from another packet type
    assert str(rc) == "Unknown reason code 0x01"
    rc = reason_code_from_int(PacketTypes.SUBACK, 0xFF)
    assert str(rc) == "Unknown reason code 0xFF" and rc.is_failure
    assert repr(reason_code_from_int(PacketTypes.WILLMESSAGE, 0)) == "ReasonCode(Unknown, 'Unknown reason code 0x00')"


def test_reason_code_from_int_never_raises_and_agrees_with_constructor():
    for packet_type in list(range(-1, 20)) + [99]:
        for value in range(-1, 300):
            rc = reason_code_from_int(packet_type, value)
            assert rc.value == value
            name = str(rc)
            if value == -1:  # identifier=-1 means "by name" in the constructor
                assert name == "Unknown reason code -1"
                continue
            try:
                strict = ReasonCode(packet_type, identifier=value)
            except ReasonCodeError:
                assert name.startswith("Unknown reason code")
            else:
                assert name == str(strict)


def test_reason_codes_alias():
    assert ReasonCodes is ReasonCode
    assert isinstance(ReasonCodes(PacketTypes.PUBACK), ReasonCode)


# ---------------------------------------------------------------------------
# properties

PROPERTY_NAMES = [
    "PayloadFormatIndicator", "MessageExpiryInterval", "ContentType", "ResponseTopic",
    "CorrelationData", "SubscriptionIdentifier", "SessionExpiryInterval",
    "AssignedClientIdentifier", "ServerKeepAlive", "AuthenticationMethod", "AuthenticationData",
    "RequestProblemInformation", "WillDelayInterval", "RequestResponseInformation",
    "ResponseInformation", "ServerReference", "ReasonString", "ReceiveMaximum",
    "TopicAliasMaximum", "TopicAlias", "MaximumQoS", "RetainAvailable", "UserProperty",
    "MaximumPacketSize", "WildcardSubscriptionAvailable", "SubscriptionIdentifierAvailable",
    "SharedSubscriptionAvailable",
]
PROPERTY_IDS = [1, 2, 3, 8, 9, 11, 17, 18, 19, 21, 22, 23, 24, 25, 26, 28, 31, 33, 34, 35, 36,
                37, 38, 39, 40, 41, 42]
STRING_PROPS = {"ContentType", "ResponseTopic", "AssignedClientIdentifier", "AuthenticationMethod",
                "ResponseInformation", "ServerReference", "ReasonString"}
BINARY_PROPS = {"CorrelationData", "AuthenticationData"}


def _sample(name):
    if name in STRING_PROPS:
        return "text"
    if name in BINARY_PROPS:
        return b"\x00\x01bin"
    if name == "UserProperty":
        return ("key", "value")
    return 1


def _paho_allows(name, packet_type):
    props = PahoProperties(packet_type)
    try:
        setattr(props, name, _sample(name))
    except (PahoMQTTException, IndexError):  # paho 2.2.0 raises IndexError for WILLMESSAGE
        return False
    return True


def test_property_tables_match_paho():
    paho = PahoProperties(PacketTypes.PUBLISH)
    assert Properties.names == paho.names
    assert Properties.types == paho.types
    assert {k: (t, sorted(p)) for k, (t, p) in Properties.properties.items()} == \
        {k: (t, sorted(p)) for k, (t, p) in paho.properties.items()}
    assert [n.replace(" ", "") for n in Properties.names] == PROPERTY_NAMES
    assert list(Properties.names.values()) == PROPERTY_IDS


@pytest.mark.parametrize("name, ident", list(zip(PROPERTY_NAMES, PROPERTY_IDS)))
def test_property_identifiers_match_paho(name, ident):
    ours, paho = Properties(PacketTypes.PUBLISH), PahoProperties(PacketTypes.PUBLISH)
    assert ours.getIdentFromName(name) == paho.getIdentFromName(name) == ident
    assert ours.getNameFromIdent(ident) == paho.getNameFromIdent(ident)
    assert ours.getNameFromIdent(ident).replace(" ", "") == name
    assert ours.getIdentFromName(ours.getNameFromIdent(ident)) == ident  # spaced name works too
    assert ours.allowsMultiple(name) == paho.allowsMultiple(name)


def test_property_unknown_ident_and_name():
    props = Properties(PacketTypes.PUBLISH)
    assert props.getIdentFromName("NoSuchThing") == -1
    assert props.getNameFromIdent(4) is None and props.getNameFromIdent(99) is None


@pytest.mark.parametrize("name", PROPERTY_NAMES)
def test_property_allowed_packet_types_match_paho(name):
    for packet_type in ALL_PACKET_TYPES:
        props = Properties(packet_type)
        if _paho_allows(name, packet_type):
            setattr(props, name, _sample(name))
            assert hasattr(props, name)
        else:
            with pytest.raises(ValueError) as info:
                setattr(props, name, _sample(name))
            assert name in str(info.value)
            assert not hasattr(props, name)


def test_property_not_allowed_message_names_packet():
    with pytest.raises(ValueError) as info:
        Properties(PacketTypes.PUBLISH).SessionExpiryInterval = 10
    message = str(info.value)
    assert "SessionExpiryInterval" in message and "Publish" in message and "Connect" in message
    with pytest.raises(ValueError) as info:
        Properties(PacketTypes.CONNECT).WillDelayInterval = 10
    assert "Will message" in str(info.value)


def test_property_unknown_name():
    props = Properties(PacketTypes.PUBLISH)
    with pytest.raises(ValueError) as info:
        props.ResponseTopik = "x"
    assert "ResponseTopik" in str(info.value) and "ResponseTopic" in str(info.value)


@pytest.mark.parametrize("packet_type, name, value", [
    (PacketTypes.CONNECT, "ReceiveMaximum", 0),
    (PacketTypes.CONNECT, "ReceiveMaximum", 65536),
    (PacketTypes.PUBLISH, "TopicAlias", 0),
    (PacketTypes.PUBLISH, "TopicAlias", 65536),
    (PacketTypes.CONNECT, "TopicAliasMaximum", -1),
    (PacketTypes.CONNECT, "TopicAliasMaximum", 65536),
    (PacketTypes.PUBLISH, "PayloadFormatIndicator", 2),
    (PacketTypes.CONNECT, "RequestProblemInformation", 2),
    (PacketTypes.CONNECT, "RequestResponseInformation", -1),
    (PacketTypes.PUBLISH, "MessageExpiryInterval", -1),
    (PacketTypes.PUBLISH, "MessageExpiryInterval", 2**32),
    (PacketTypes.CONNECT, "SessionExpiryInterval", 2**32),
    (PacketTypes.WILLMESSAGE, "WillDelayInterval", -5),
    (PacketTypes.PUBLISH, "SubscriptionIdentifier", 0),
    (PacketTypes.SUBSCRIBE, "SubscriptionIdentifier", 268435456),
    (PacketTypes.CONNECT, "MaximumPacketSize", 0),
    (PacketTypes.CONNECT, "MaximumPacketSize", 2**32),
    (PacketTypes.CONNACK, "ServerKeepAlive", 65536),
    (PacketTypes.CONNACK, "MaximumQoS", 2),
    (PacketTypes.CONNACK, "RetainAvailable", 256),
])
def test_property_range_errors(packet_type, name, value):
    props = Properties(packet_type)
    with pytest.raises(ValueError) as info:
        setattr(props, name, value)
    assert name in str(info.value) and "range" in str(info.value)
    assert not hasattr(props, name)


@pytest.mark.parametrize("packet_type, name, value", [
    (PacketTypes.CONNECT, "ReceiveMaximum", 1),
    (PacketTypes.CONNECT, "ReceiveMaximum", 65535),
    (PacketTypes.CONNECT, "TopicAliasMaximum", 0),
    (PacketTypes.PUBLISH, "MessageExpiryInterval", 2**32 - 1),
    (PacketTypes.SUBSCRIBE, "SubscriptionIdentifier", 268435455),
    (PacketTypes.CONNECT, "MaximumPacketSize", 2**32 - 1),
    (PacketTypes.PUBLISH, "PayloadFormatIndicator", True),
])
def test_property_range_limits_accepted(packet_type, name, value):
    props = Properties(packet_type)
    setattr(props, name, value)
    stored = getattr(props, name)
    assert (stored[0] if isinstance(stored, list) else stored) == value
    assert type(stored[0] if isinstance(stored, list) else stored) is int


@pytest.mark.parametrize("packet_type, name, value", [
    (PacketTypes.PUBLISH, "MessageExpiryInterval", "10"),
    (PacketTypes.PUBLISH, "MessageExpiryInterval", 1.0),
    (PacketTypes.PUBLISH, "ResponseTopic", 5),
    (PacketTypes.PUBLISH, "CorrelationData", "text"),
    (PacketTypes.PUBLISH, "UserProperty", ["a", "b"]),
    (PacketTypes.PUBLISH, "UserProperty", ("a", 1)),
    (PacketTypes.PUBLISH, "UserProperty", ("a", "b", "c")),
    (PacketTypes.PUBLISH, "SubscriptionIdentifier", ["1"]),
    (PacketTypes.PUBLISH, "ContentType", ["text"]),
])
def test_property_type_errors(packet_type, name, value):
    props = Properties(packet_type)
    with pytest.raises(TypeError) as info:
        setattr(props, name, value)
    assert name in str(info.value)
    assert not hasattr(props, name)


def test_property_string_checks():
    props = Properties(PacketTypes.PUBLISH)
    props.ContentType = b"application/json"  # UTF-8 bytes are accepted, stored as str
    assert props.ContentType == "application/json"
    props.ResponseTopic = "r\u00e9ponse/\U0001F600"
    assert props.ResponseTopic == "r\u00e9ponse/\U0001F600"
    for bad in [b"\xff\xfe", "nul\x00inside", "\ud800", "x" * 65536, "\u00e9" * 32768]:
        with pytest.raises(ValueError) as info:
            props.ContentType = bad
        assert "ContentType" in str(info.value)
    props.ContentType = "x" * 65535
    with pytest.raises(ValueError):
        props.CorrelationData = b"x" * 65536
    props.CorrelationData = bytearray(b"abc")
    assert props.CorrelationData == b"abc" and type(props.CorrelationData) is bytes
    props.CorrelationData = memoryview(b"xyz")
    assert props.CorrelationData == b"xyz"


def test_user_property_accumulates_like_paho():
    ours, paho = Properties(PacketTypes.PUBLISH), PahoProperties(PacketTypes.PUBLISH)
    for props in (ours, paho):
        props.UserProperty = ("a", "1")
        props.UserProperty = [("b", "2"), ("c", "3")]
        props.UserProperty = ("a", "4")
    assert ours.UserProperty == paho.UserProperty == [("a", "1"), ("b", "2"), ("c", "3"), ("a", "4")]
    ours.UserProperty = [["d", "5"]]  # a list pair is stored as a tuple
    assert ours.UserProperty[-1] == ("d", "5")
    with pytest.raises(TypeError):
        ours.UserProperty = [("ok", "ok"), ("bad",)]
    assert len(ours.UserProperty) == 5  # a failed assignment changes nothing


def test_subscription_identifier_is_a_list_like_paho():
    ours, paho = Properties(PacketTypes.PUBLISH), PahoProperties(PacketTypes.PUBLISH)
    for props in (ours, paho):
        props.SubscriptionIdentifier = 5
        props.SubscriptionIdentifier = [6, 7]
    assert ours.SubscriptionIdentifier == paho.SubscriptionIdentifier == [5, 6, 7]


def _filled_publish(cls):
    props = cls(PacketTypes.PUBLISH)
    props.PayloadFormatIndicator = 1
    props.MessageExpiryInterval = 3600
    props.ContentType = "application/json"
    props.ResponseTopic = "replies/1"
    props.CorrelationData = b"\x01\x02id"
    props.SubscriptionIdentifier = 42
    props.TopicAlias = 7
    props.UserProperty = ("tenant", "a")
    props.UserProperty = ("trace", "xyz")
    return props


def _filled_connack(cls):
    props = cls(PacketTypes.CONNACK)
    props.SessionExpiryInterval = 0xFFFFFFFF
    props.AssignedClientIdentifier = "auto-123"
    props.ServerKeepAlive = 30
    props.AuthenticationMethod = "SCRAM-SHA-1"
    props.AuthenticationData = b"\x00" * 5
    props.ResponseInformation = "resp"
    props.ServerReference = "other:1883"
    props.ReasonString = "fine"
    props.ReceiveMaximum = 20
    props.TopicAliasMaximum = 10
    props.MaximumQoS = 1
    props.RetainAvailable = 0
    props.UserProperty = ("a", "b")
    props.MaximumPacketSize = 268435455
    props.WildcardSubscriptionAvailable = 1
    props.SubscriptionIdentifierAvailable = 0
    props.SharedSubscriptionAvailable = 1
    return props


def _filled_connect(cls):
    props = cls(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 120
    props.RequestProblemInformation = 0
    props.RequestResponseInformation = 1
    props.ReceiveMaximum = 65535
    props.TopicAliasMaximum = 0
    props.MaximumPacketSize = 1
    props.AuthenticationMethod = "m"
    props.AuthenticationData = b""
    return props


def _filled_will(cls):
    props = cls(PacketTypes.WILLMESSAGE)
    props.WillDelayInterval = 5
    props.MessageExpiryInterval = 0
    props.UserProperty = ("\u00e9", "\U0001F600")
    return props


FILLERS = [_filled_publish, _filled_connack, _filled_connect, _filled_will]


@pytest.mark.parametrize("filler", FILLERS)
def test_properties_str_json_pack_match_paho(filler):
    ours, paho = filler(Properties), filler(PahoProperties)
    assert str(ours) == str(paho)
    expected_json = paho.json()
    if "AuthenticationData" in expected_json:  # ours gives all binary values as hex
        expected_json["AuthenticationData"] = expected_json["AuthenticationData"].hex()
    assert ours.json() == expected_json
    json.dumps(ours.json())
    assert ours.pack() == bytes(paho.pack())


@pytest.mark.parametrize("filler", FILLERS)
def test_properties_unpack_paho_bytes(filler):
    paho = filler(PahoProperties)
    data = bytes(paho.pack()) + b"trailing"
    ours = Properties(paho.packetType)
    ours.UserProperty = ("to be", "cleared")
    result, used = ours.unpack(data)
    assert result is ours and used == len(data) - len(b"trailing")
    assert ours == filler(Properties)
    again = PahoProperties(paho.packetType)
    again.unpack(ours.pack())
    assert str(again) == str(ours)


def test_properties_unpack_errors():
    with pytest.raises(ValueError, match="unknown property identifier 4"):
        Properties(PacketTypes.PUBLISH).unpack(b"\x02\x04\x00")
    with pytest.raises(ValueError, match="more than once"):
        Properties(PacketTypes.PUBLISH).unpack(b"\x06\x23\x00\x01\x23\x00\x02")
    with pytest.raises(ValueError, match="truncated"):
        Properties(PacketTypes.PUBLISH).unpack(b"\x03\x03\x00\x05")
    with pytest.raises(ValueError, match="only"):
        Properties(PacketTypes.PUBLISH).unpack(b"\x09\x01")
    with pytest.raises(ValueError, match="UTF-8"):
        Properties(PacketTypes.PUBLISH).unpack(b"\x04\x03\x00\x01\xff")
    props, used = Properties(PacketTypes.PUBLISH).unpack(b"\x00")
    assert props.isEmpty() and used == 1


def test_properties_empty_clear_delete():
    props = Properties(PacketTypes.PUBLISH)
    assert props.isEmpty() and str(props) == "[]" and props.json() == {} and props.to_pairs() == []
    assert props.pack() == b"\x00" == bytes(PahoProperties(PacketTypes.PUBLISH).pack())
    assert not hasattr(props, "ResponseTopic")
    setattr(props, "Response Topic", "a/b")  # paho accepts spaced names too
    assert props.ResponseTopic == "a/b" and not props.isEmpty()
    del props.ResponseTopic
    assert props.isEmpty()
    props = _filled_publish(Properties)
    props.clear()
    assert props.isEmpty() and props.packetType == PacketTypes.PUBLISH
    props.UserProperty = ("x", "y")  # accumulation restarts after clear
    assert props.UserProperty == [("x", "y")]


def test_properties_equality_and_repr():
    a, b = _filled_publish(Properties), _filled_publish(Properties)
    assert a == b
    b.TopicAlias = 8
    assert a != b
    assert Properties(PacketTypes.PUBLISH) != Properties(PacketTypes.WILLMESSAGE)
    assert Properties(PacketTypes.PUBLISH) == Properties(PacketTypes.PUBLISH)
    assert a != "x"
    with pytest.raises(TypeError):
        hash(a)
    assert repr(Properties(PacketTypes.PUBACK)) == "Properties(Puback, [])"
    assert repr(a).startswith("Properties(Publish, [PayloadFormatIndicator : 1, ")


def test_to_pairs():
    props = _filled_publish(Properties)
    props.SubscriptionIdentifier = 43
    assert props.to_pairs() == [
        (1, 1), (2, 3600), (3, "application/json"), (8, "replies/1"), (9, b"\x01\x02id"),
        (11, 42), (11, 43), (35, 7), (38, ("tenant", "a")), (38, ("trace", "xyz")),
    ]
    for ident, value in props.to_pairs():
        assert type(value) in (int, str, bytes, tuple)


@pytest.mark.parametrize("filler", FILLERS)
def test_pairs_round_trip(filler):
    props = filler(Properties)
    pairs = props.to_pairs()
    clone = Properties.from_pairs(props.packetType, pairs)
    assert clone == props and clone.to_pairs() == pairs
    assert str(clone) == str(props)


def test_from_pairs_is_lenient():
    pairs = [(999, "unknown"), (4, 1), (3, "text/plain"), (38, ["k", "v"]), (38, ("k2", "v2")),
             (9, bytearray(b"id")), (11, 1), (11, 2), (17, 30)]
    props = Properties.from_pairs(PacketTypes.PUBLISH, pairs)
    assert props.ContentType == "text/plain"
    assert props.UserProperty == [("k", "v"), ("k2", "v2")]
    assert props.CorrelationData == b"id" and type(props.CorrelationData) is bytes
    assert props.SubscriptionIdentifier == [1, 2]
    assert props.SessionExpiryInterval == 30  # not allowed in PUBLISH, but kept rather than raising
    assert Properties.from_pairs(PacketTypes.CONNACK, []).isEmpty()
    assert Properties.from_pairs(PacketTypes.CONNACK, iter([(36, 0)])).MaximumQoS == 0


def test_to_pairs_works_on_paho_properties():
    paho = _filled_publish(PahoProperties)
    assert Properties.to_pairs(paho) == _filled_publish(Properties).to_pairs()


@st.composite
def _publish_properties(draw):
    text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20)
    pairs = []
    if draw(st.booleans()):
        pairs.append((1, draw(st.integers(0, 1))))
    if draw(st.booleans()):
        pairs.append((2, draw(st.integers(0, 2**32 - 1))))
    if draw(st.booleans()):
        pairs.append((3, draw(text)))
    if draw(st.booleans()):
        pairs.append((8, draw(text)))
    if draw(st.booleans()):
        pairs.append((9, draw(st.binary(max_size=30))))
    for sub_id in draw(st.lists(st.integers(1, 268435455), max_size=3)):
        pairs.append((11, sub_id))
    if draw(st.booleans()):
        pairs.append((35, draw(st.integers(1, 65535))))
    for pair in draw(st.lists(st.tuples(text, text), max_size=4)):
        pairs.append((38, pair))
    return pairs


@settings(max_examples=200, deadline=None)
@given(_publish_properties())
def test_properties_hypothesis_against_paho(pairs):
    ours, paho = Properties(PacketTypes.PUBLISH), PahoProperties(PacketTypes.PUBLISH)
    for ident, value in pairs:
        name = ours.getNameFromIdent(ident).replace(" ", "")
        setattr(ours, name, value)
        setattr(paho, name, value)
    assert ours.to_pairs() == pairs
    assert Properties.from_pairs(PacketTypes.PUBLISH, pairs) == ours
    packed = ours.pack()
    assert packed == bytes(paho.pack())
    assert Properties(PacketTypes.PUBLISH).unpack(packed)[0] == ours
    assert str(ours) == str(paho)


@pytest.mark.parametrize("value", [0, 1, 127, 128, 16383, 16384, 2097151, 2097152, 268435455])
def test_variable_byte_integers_match_paho(value):
    encoded = VariableByteIntegers.encode(value)
    assert encoded == bytes(PahoVBI.encode(value))
    assert VariableByteIntegers.decode(encoded + b"\x7f") == (value, len(encoded))


def test_variable_byte_integer_errors():
    for bad in (-1, 268435456):
        with pytest.raises(ValueError):
            VariableByteIntegers.encode(bad)
    with pytest.raises(ValueError, match="longer than 4"):
        VariableByteIntegers.decode(b"\xff\xff\xff\xff\x01")
    with pytest.raises(ValueError, match="not enough"):
        VariableByteIntegers.decode(b"\x80")
    with pytest.raises(ValueError, match="not enough"):
        VariableByteIntegers.decode(b"")


# ---------------------------------------------------------------------------
# subscribe options


def test_subscribe_options_constants_and_defaults():
    for name in ("RETAIN_SEND_ON_SUBSCRIBE", "RETAIN_SEND_IF_NEW_SUB", "RETAIN_DO_NOT_SEND"):
        assert getattr(SubscribeOptions, name) == getattr(PahoSubscribeOptions, name)
    opts = SubscribeOptions()
    assert (opts.qos, opts.QoS, opts.noLocal, opts.retainAsPublished, opts.retainHandling) == \
        (0, 0, False, False, SubscribeOptions.RETAIN_SEND_ON_SUBSCRIBE)
    assert SubscribeOptions.names == PahoSubscribeOptions(0).names


@pytest.mark.parametrize("qos, no_local, rap, rh", list(itertools.product(
    range(3), (False, True), (False, True), range(3))))
def test_subscribe_options_match_paho(qos, no_local, rap, rh):
    ours = SubscribeOptions(qos=qos, noLocal=no_local, retainAsPublished=rap, retainHandling=rh)
    paho = PahoSubscribeOptions(qos=qos, noLocal=no_local, retainAsPublished=rap, retainHandling=rh)
    assert str(ours) == str(paho) and repr(ours) == repr(paho)
    assert ours.json() == paho.json()
    assert ours.pack() == paho.pack()
    clone = SubscribeOptions()
    assert clone.unpack(paho.pack()) == 1 and clone == ours


def test_subscribe_options_qos_alias_and_mutation():
    opts = SubscribeOptions(qos=1)
    assert opts.QoS == 1
    opts.QoS = 2
    assert opts.qos == 2
    opts.qos = 0
    assert opts.QoS == 0
    opts.noLocal = 1
    assert opts.noLocal is True
    opts.retainHandling = SubscribeOptions.RETAIN_DO_NOT_SEND
    assert opts.json()["retainHandling"] == 2
    assert opts == SubscribeOptions(0, True, False, 2) and opts != SubscribeOptions()
    assert opts != "x"


@pytest.mark.parametrize("kwargs, field", [
    ({"qos": 3}, "qos"), ({"qos": -1}, "qos"), ({"qos": "1"}, "qos"), ({"qos": 1.0}, "qos"),
    ({"retainHandling": 3}, "retainHandling"), ({"retainHandling": None}, "retainHandling"),
])
def test_subscribe_options_invalid(kwargs, field):
    with pytest.raises(ValueError) as info:
        SubscribeOptions(**kwargs)
    assert field in str(info.value) and "0, 1 or 2" in str(info.value)


def test_subscribe_options_invalid_assignment():
    opts = SubscribeOptions(qos=1)
    with pytest.raises(ValueError, match="qos"):
        opts.QoS = 5
    with pytest.raises(ValueError, match="retainHandling"):
        opts.retainHandling = -1
    assert opts.qos == 1 and opts.retainHandling == 0
    with pytest.raises(AttributeError):
        opts.noLocl = True  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="reserved"):
        SubscribeOptions().unpack(b"\xc0")
    with pytest.raises(ValueError, match="retainHandling"):
        SubscribeOptions().unpack(b"\x30")


# ---------------------------------------------------------------------------
# topic matching

MATCH_CASES = [
    ("foo/bar", "foo/bar", True),
    ("foo/+", "foo/bar", True),
    ("foo/+/baz", "foo/bar/baz", True),
    ("foo/+/#", "foo/bar/baz", True),
    ("A/B/+/#", "A/B/B/C", True),
    ("#", "foo/bar/baz", True),
    ("#", "/foo/bar", True),
    ("/#", "/foo/bar", True),
    ("$SYS/bar", "$SYS/bar", True),
    ("foo/#", "foo/", True),
    ("foo//bar", "foo//bar", True),
    ("foo//+", "foo//bar", True),
    ("foo/+/+/baz", "foo///baz", True),
    ("foo/bar/+", "foo/bar/", True),
    ("foo/#", "foo", True),
    ("foo/+/#", "foo/bar", True),
    ("+", "", True),
    ("#", "", True),
    ("+/+", "/", True),
    ("$SYS/#", "$SYS", True),
    ("$SYS/+", "$SYS/x", True),
    ("test/6/#", "test/3", False),
    ("foo/bar", "foo", False),
    ("foo/+", "foo/bar/baz", False),
    ("foo/+/baz", "foo/bar/bar", False),
    ("foo/+/#", "fo2/bar/baz", False),
    ("/#", "foo/bar", False),
    ("#", "$SYS/bar", False),
    ("$BOB/bar", "$SYS/bar", False),
    ("+/bar", "$SYS/bar", False),
    ("+", "$SYS", False),
    ("+/#", "$SYS/x", False),
    ("foo/bar", "foo/bar/", False),
    ("foo/+", "foo", False),
    ("foo", "foo/bar", False),
    ("", "", True),
    ("", "a", False),
    ("a+", "ab", False),
    ("a#", "a/b", False),
]


@pytest.mark.parametrize("sub, topic, expected", MATCH_CASES)
def test_topic_matches_sub_table(sub, topic, expected):
    assert topic_matches_sub(sub, topic) is expected
    assert paho_client.topic_matches_sub(sub, topic) is expected
    assert topic_matches_sub(sub.encode(), topic.encode()) is expected
    matcher = TopicMatcher()
    matcher[sub] = "value"
    assert list(matcher.iter_match(topic)) == (["value"] if expected else [])


@pytest.mark.parametrize("sub, topic, expected", [
    ("$share/group/foo/+", "foo/bar", True),
    ("$share/group/#", "foo/bar", True),
    ("$share/group/#", "$SYS/bar", False),
    ("$share/g/foo", "foo", True),
    ("$share/g/foo", "$share/g/foo", False),
    ("$share/group/foo/+", "foo/bar/baz", False),
    ("$share/g", "$share/g", True),  # no filter part: taken literally
    ("$shared/g/foo", "foo", False),
])
def test_topic_matches_shared_subscription(sub, topic, expected):
    assert topic_matches_sub(sub, topic) is expected
    matcher = TopicMatcher()
    matcher[sub] = 1
    assert list(matcher.iter_match(topic)) == ([1] if expected else [])


def test_topic_matches_sub_type_errors():
    with pytest.raises(TypeError):
        topic_matches_sub(1, "a")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        topic_matches_sub("a", None)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        topic_matches_sub(b"\xff", "a")


_LEVELS = st.sampled_from(["a", "b", "", "+", "#", "$SYS", "$x", "a+", "#b", "c d", "\u00e9"])
_FILTERS = st.lists(_LEVELS, min_size=1, max_size=5).map("/".join)
_TOPICS = st.lists(st.sampled_from(["a", "b", "", "$SYS", "$x", "+", "#", "\u00e9"]),
                   min_size=1, max_size=5).map("/".join)


@settings(max_examples=2000, deadline=None)
@given(_FILTERS, _TOPICS)
def test_topic_matches_sub_same_as_paho(sub, topic):
    expected = paho_client.topic_matches_sub(sub, topic)
    assert topic_matches_sub(sub, topic) is expected
    matcher = TopicMatcher()
    matcher[sub] = True
    assert list(matcher.iter_match(topic)) == ([True] if expected else [])


@settings(max_examples=300, deadline=None)
@given(st.lists(_FILTERS, max_size=12, unique=True), _TOPICS)
def test_topic_matcher_same_as_scan_and_paho(filters, topic):
    ours, paho = TopicMatcher(), PahoMatcher()
    for f in filters:
        ours[f] = f
        paho[f] = f
    got = list(ours.iter_match(topic))
    assert len(got) == len(set(got))  # each filter at most once
    assert sorted(got) == sorted(f for f in filters if topic_matches_sub(f, topic))
    assert set(got) == set(paho.iter_match(topic))


@settings(max_examples=100, deadline=None)
@given(st.lists(_FILTERS, max_size=12, unique=True), st.data())
def test_topic_matcher_delete_prunes(filters, data):
    matcher = TopicMatcher()
    for f in filters:
        matcher[f] = f
    assert len(matcher) == len(filters) and sorted(matcher.keys()) == sorted(filters)
    order = data.draw(st.permutations(filters))
    for i, f in enumerate(order):
        assert f in matcher and matcher[f] == f
        del matcher[f]
        assert f not in matcher
        remaining = order[i + 1:]
        assert sorted(matcher.keys()) == sorted(remaining)
    assert len(matcher) == 0 and not matcher
    assert matcher._root.children == {}  # every level was pruned


def test_topic_matcher_basic_mapping():
    matcher = MQTTMatcher()
    assert MQTTMatcher is TopicMatcher
    matcher["a/+"] = None  # None is a value like any other
    assert "a/+" in matcher and matcher["a/+"] is None
    assert list(matcher.iter_match("a/b")) == [None]
    matcher["a/+"] = 2  # replace
    assert len(matcher) == 1 and matcher["a/+"] == 2
    assert matcher.get("a/#") is None and matcher.get("a/#", 5) == 5
    with pytest.raises(KeyError):
        matcher["a"]
    with pytest.raises(KeyError):
        matcher["a/+/c"]
    with pytest.raises(KeyError):
        del matcher["a"]
    with pytest.raises(KeyError):
        del matcher["x/y"]
    assert 5 not in matcher
    with pytest.raises(TypeError):
        matcher[b"a"] = 1  # type: ignore[index]
    matcher["a/#"] = 3
    matcher["a/b"] = 4
    matcher["$share/g/a/b"] = 5
    matcher["#"] = 6
    assert list(matcher.iter_match("a/b")) == [4, 5, 2, 3, 6]  # literal, '+', then '#'
    assert list(matcher.iter_match(b"a/b")) == [4, 5, 2, 3, 6]
    del matcher["a/b"]
    assert matcher["$share/g/a/b"] == 5 and sorted(matcher.iter_match("a/b")) == [2, 3, 5, 6]
    assert list(matcher.iter_match("$SYS/a")) == []


def test_topic_matcher_literal_hash_topic_reports_once():
    matcher = TopicMatcher()
    matcher["a/#"] = "x"
    assert list(matcher.iter_match("a/#")) == ["x"]
    assert paho_client.topic_matches_sub("a/#", "a/#")


def test_topic_matcher_deep_topic_does_not_recurse():
    matcher = TopicMatcher()
    deep = "/".join(["a"] * 5000)
    matcher[deep] = 1
    matcher["+/" * 4999 + "#"] = 2
    assert sorted(matcher.iter_match(deep)) == [1, 2]


def test_topic_matcher_does_not_scan_all_filters():
    matcher = TopicMatcher()
    for i in range(100_000):
        matcher[f"devices/{i}/state"] = i
    matcher["devices/+/state"] = "any"
    start = time.perf_counter()
    for _ in range(2000):
        result = list(matcher.iter_match("devices/77/state"))
    elapsed = time.perf_counter() - start
    assert sorted(map(str, result)) == ["77", "any"]
    # 2000 scans of 100k filters would take minutes; a trie walk takes milliseconds
    assert elapsed < 2.0, elapsed


def test_topic_matcher_concurrent_reads_and_writes():
    matcher = TopicMatcher()
    for i in range(50):
        matcher[f"s/{i}/+"] = f"s/{i}/+"
    stop = threading.Event()
    errors = []

    def writer(pattern):
        try:
            i = 0
            while not stop.is_set():
                key = pattern.format(i % 200)  # each writer toggles its own keys
                if key in matcher:
                    del matcher[key]
                else:
                    matcher[key] = key
                matcher[f"s/{i % 50}/+"] = f"s/{i % 50}/+"
                i += 1
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(p,)) for p in ("w/{}/#", "w/{}/+/#")]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            for topic in ("s/7/x", "w/3/y/z", "w/150"):
                for value in matcher.iter_match(topic):
                    assert topic_matches_sub(value, topic)
                    matcher.get(value)  # mutation-safe while iterating a snapshot
            assert matcher["s/7/+"] == "s/7/+"
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors


def test_topic_matcher_mutation_during_iteration():
    matcher = TopicMatcher()
    for key in ("a/#", "a/+", "+/b", "#"):
        matcher[key] = key
    seen = []
    for value in matcher.iter_match("a/b"):
        seen.append(value)
        del matcher[value]
        matcher[value + "/new"] = 1
    assert sorted(seen) == ["#", "+/b", "a/#", "a/+"]
    assert len(matcher) == 4


# ---------------------------------------------------------------------------
# topic validation


@pytest.mark.parametrize("topic", ["a", "a/b", "/", "a//b", "$SYS/x", "\u00e9t\u00e9", " ", "x" * 65535,
                                   "$share/g/a"])
def test_validate_topic_name_ok(topic):
    assert validate_topic_name(topic) == topic
    assert validate_topic_name(topic.encode()) == topic


@pytest.mark.parametrize("topic, fragment", [
    ("", "empty"),
    ("a/+", "wildcard"),
    ("a/#", "wildcard"),
    ("a+b", "wildcard"),
    ("nul\x00", "NUL"),
    ("x" * 65536, "65535"),
    ("\u00e9" * 32768, "65536 bytes"),
    ("\udc80", "UTF-8"),
    (b"\xff\xfe", "UTF-8"),
    (b"", "empty"),
])
def test_validate_topic_name_errors(topic, fragment):
    with pytest.raises(ValueError) as info:
        validate_topic_name(topic)
    assert fragment in str(info.value)


@pytest.mark.parametrize("bad", [None, 5, ["a"], 1.5])
def test_validate_type_errors(bad):
    with pytest.raises(TypeError, match="str or bytes"):
        validate_topic_name(bad)
    with pytest.raises(TypeError, match="str or bytes"):
        validate_topic_filter(bad)


@pytest.mark.parametrize("sub", ["a", "#", "+", "a/#", "+/+", "a/+/b/#", "/", "a//+", "$SYS/#",
                                 "+/#", "$share/g/a/#", "$share/group/+", "x" * 65535, "\u00e9/+"])
def test_validate_topic_filter_ok(sub):
    assert validate_topic_filter(sub) == sub
    assert validate_topic_filter(sub.encode()) == sub


@pytest.mark.parametrize("sub, fragment", [
    ("", "empty"),
    ("a/#/b", "last level"),
    ("#/a", "last level"),
    ("a#", "whole level"),
    ("a/b#", "whole level"),
    ("a/#b", "whole level"),
    ("a+", "whole level"),
    ("a/+b/c", "whole level"),
    ("nul\x00/a", "NUL"),
    ("x" * 65536, "65535"),
    (b"\xc3", "UTF-8"),
    ("$share/g", "$share/<group>/<filter>"),
    ("$share//a", "non-empty group"),
    ("$share", "$share/<group>/<filter>"),
    ("$share/g/", "empty topic filter"),
    ("$share/g+/a", "group name"),
    ("$share/g/a/#/b", "last level"),
])
def test_validate_topic_filter_errors(sub, fragment):
    with pytest.raises(ValueError) as info:
        validate_topic_filter(sub)
    assert fragment in str(info.value)


@settings(max_examples=500, deadline=None)
@given(_FILTERS)
def test_validate_topic_filter_agrees_with_level_rules(sub):
    levels = sub.split("/")
    valid = sub != "" and all(("+" not in lv or lv == "+") and ("#" not in lv or lv == "#") for lv in levels) \
        and "#" not in levels[:-1]
    if valid:
        assert validate_topic_filter(sub) == sub
    else:
        with pytest.raises(ValueError):
            validate_topic_filter(sub)


# ---------------------------------------------------------------------------
# filter_covers: one filter's topics are a subset of another's
# ---------------------------------------------------------------------------

from sermas_bus.matcher import filter_covers, topic_matches_sub  # noqa: E402

_LEVELS = st.sampled_from(["a", "b", "+", "$x"])


def _filters():
    body = st.lists(_LEVELS, min_size=1, max_size=4)
    return st.tuples(body, st.booleans()).map(
        lambda p: "/".join([lv for lv in p[0] if lv != "$x" or p[0].index(lv) == 0] + (["#"] if p[1] else [])))


_TOPICS = [("/".join(t)) for n in range(1, 5) for t in itertools.product(["a", "b", "$x"], repeat=n)
           if "$x" not in t[1:]]


@pytest.mark.parametrize("wide,narrow,expected", [
    ("a/#", "a", True), ("a/#", "a/b/c", True), ("a/+", "a/b", True), ("+/b", "a/b", True),
    ("a/+", "a/#", False), ("a/b", "a/+", False), ("#", "$SYS/x", False), ("+/x", "$SYS/x", False),
    ("a/b", "a/b", True), ("a/+/c", "a/b/+", False), ("a", "a/b", False),
])
def test_filter_covers_examples(wide, narrow, expected):
    assert filter_covers(wide, narrow) is expected


@settings(max_examples=300, deadline=None)
@given(_filters(), _filters())
def test_filter_covers_agrees_with_matching(wide, narrow):
    """Sound: when covers(w, n), every topic (of a small universe) n matches, w matches too."""
    if not filter_covers(wide, narrow):
        return
    for topic in _TOPICS:
        if topic_matches_sub(narrow, topic):
            assert topic_matches_sub(wide, topic), (wide, narrow, topic)
