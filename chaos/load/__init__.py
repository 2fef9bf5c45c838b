"""Load with Locust: a gevent FastPort client, Locust users that record what they see, the rig's bench."""
